"""int4 linears on torch's tinygemm kernel (`aten._weight_int4pack_mm`: bfloat16 activations, sm80+ GPUs).

tinygemm reads its weights at memory speed for a few rows (decode: ~16 us for ChatGLM-6B's QKV on an H200) but
computes slowly for many (a 512-token prompt: ~1.7 ms for the same matrix, ~30 TFLOP/s). So for many rows a layer
dequantizes its weight once into a shared bfloat16 scratch and lets cuBLAS multiply. tinygemm's packed layout
is the tensor-core fragment order, documented nowhere; `TileLayout.discover` finds it on the GPU by packing
index-coded matrices, checks that every tile follows the same order, and the backend checks the dequantized
weight against tinygemm's own product before using it. Where anything disagrees, tinygemm serves every call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatglm_tui.model.quantize import int4pack_scales

log = logging.getLogger(__name__)
# Rows of input from which a layer dequantizes and calls cuBLAS instead of tinygemm (measured on an H200:
# tinygemm's time grows ~linearly past 16 rows; dequantize + cuBLAS costs about as much as 64 tinygemm rows).
DEQUANTIZE_MIN_ROWS = 64
# (uint8 [N, K/2] nibble pairs, inner k tiles) -> int32 [N/8, K/(tiles*16), 32, tiles/2]
Packer = Callable[[Tensor, int], Tensor]
_CHUNK_VALUES = 1 << 23  # weights dequantized per pass: ~80 MB of temporaries, ~25 passes per ChatGLM-6B layer


def tinygemm_available(device: torch.device) -> bool:
    """Whether torch's fused int4 matmul runs on this GPU (a CUDA 12+ build of torch and an sm80+ card)."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm") or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def inner_k_tiles(in_features: int) -> int:
    return next(tiles for tiles in (8, 4, 2) if in_features % (tiles * 16) == 0)


def pack_tinygemm(q: Tensor, scales: Tensor, group_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """int8 values [N, K] in [-8, 7] and float32 scales [N, K / group] -> (packed weight, scales and zeros).

    tinygemm dequantizes `(u - 8) * scale + zero` from unsigned nibbles u, two per byte with the even input in
    the high nibble; with u = q + 8 and zero 0 that is exactly q * scale (the scale rounded to bfloat16).
    """
    assert scales.shape[1] * group_size == q.shape[1]
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    pairs = ((u[:, ::2] << 4) | u[:, 1::2]).contiguous().to(device)
    packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles(q.shape[1]))
    return packed, int4pack_scales(scales).to(device)


@dataclass(frozen=True)
class TileLayout:
    """Where tinygemm puts the values of one tile (8 rows x tiles*16 inputs): `order[j]` is the row-major
    position inside the tile of the j-th nibble of the tile's packed words (nibble i of a word is bits 4i..4i+3)."""

    rows: int
    cols: int
    order: Tensor  # long [rows * cols], on the device

    @classmethod
    def discover(cls, device: torch.device, tiles: int, pack: Packer | None = None) -> TileLayout | None:
        """Pack index-coded 2x2-tile matrices and read back where each index went; None unless every tile holds
        its own 8 x tiles*16 block in one and the same order. `pack`: tinygemm's packing op (by default)."""
        pack = pack or torch.ops.aten._convert_weight_to_int4pack
        rows, cols = 8, tiles * 16
        n, k = 2 * rows, 2 * cols
        codes = torch.arange(n * k, device=device).view(n, k)
        source = torch.zeros(2, 2, rows * cols, dtype=torch.long, device=device)
        for digit in range(4):  # 16**4 > n * k for every tile size
            u = ((codes >> (4 * digit)) & 15).to(torch.uint8)
            packed = pack((u[:, ::2] << 4) | u[:, 1::2], tiles)
            source += _nibbles(packed).view(2, 2, -1).long() << (4 * digit)
        row, col = source // k, source % k
        within = (row % rows) * cols + col % cols
        for a in range(2):
            for b in range(2):
                if not (bool((row[a, b] // rows == a).all()) and bool((col[a, b] // cols == b).all())
                        and torch.equal(within[a, b], within[0, 0])):
                    return None
        if not torch.equal(within[0, 0].sort().values, torch.arange(rows * cols, device=device)):
            return None
        return cls(rows, cols, within[0, 0])


def _nibbles(packed: Tensor, shifts: Tensor | None = None) -> Tensor:
    """int32 words [..., W] -> their nibbles [..., W * 8] (uint8), nibble i of a word at position 8w + i."""
    if shifts is None:
        shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    return ((packed.unsqueeze(-1) >> shifts) & 15).to(torch.uint8).flatten(-2)


class TinyGemmInt4Linear(nn.Module):
    """y = x W^T + b with W int4 in tinygemm's packed layout: one bfloat16 (scale, zero) per group of inputs."""

    def __init__(self, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.inner_k_tiles = inner_k_tiles(in_features)
        # aten._convert_weight_to_int4pack's output: [N/8, K/(tiles*16), 32, tiles/2] int32
        packed = (-(-out_features // 8), in_features // (self.inner_k_tiles * 16), 32, self.inner_k_tiles // 2)
        self.register_buffer("weight_packed", torch.empty(packed, dtype=torch.int32))
        self.register_buffer("weight_scales_zeros",
                             torch.empty(in_features // group_size, out_features, 2, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.empty(out_features, dtype=torch.bfloat16))
        # Set by the backend once the layout is known and checked: (tile layout, shared bfloat16 scratch).
        self.dequantizer: Dequantizer | None = None

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.dequantizer is not None and rows.shape[0] >= DEQUANTIZE_MIN_ROWS:
            y = F.linear(rows, self.dequantizer.weight(self), self.bias)
        else:
            y = torch.ops.aten._weight_int4pack_mm(rows, self.weight_packed, self.group_size,
                                                   self.weight_scales_zeros).add_(self.bias)
        return y.view(*x.shape[:-1], self.out_features)


class Dequantizer:
    """Unpacks tinygemm weights into one bfloat16 scratch shared by all the layers of a model (the largest
    weight's size: 134 MB for ChatGLM-6B): one Triton kernel per weight where Triton runs (no temporaries, ~0.1
    ms), else a chunk of rows at a time with PyTorch ops (~80 MB of temporaries, launch-bound)."""

    def __init__(self, layouts: dict[int, TileLayout], device: torch.device, use_triton: bool = True) -> None:
        self.layouts, self.device = layouts, device
        self.scratch: Tensor | None = None
        self.shifts = torch.arange(0, 32, 4, device=device, dtype=torch.int32)
        self.kernel = _triton_dequantize() if use_triton else None
        # per layout: for each row-major position of a tile, the word and the bit offset of its nibble
        self.gather = {tiles: ((layout.order.argsort() // 8).to(torch.int32).contiguous(),
                               (layout.order.argsort() % 8 * 4).to(torch.int32).contiguous())
                       for tiles, layout in layouts.items()}

    def weight(self, layer: TinyGemmInt4Linear) -> Tensor:
        """The layer's weight, bfloat16 [N, K] (a view of the scratch, valid until the next call)."""
        n, k = layer.out_features, layer.in_features
        if self.scratch is None or self.scratch.numel() < n * k:
            self.scratch = None
            self.scratch = torch.empty(n * k, dtype=torch.bfloat16, device=self.device)
        out = self.scratch[: n * k].view(n, k)
        layout = self.layouts[layer.inner_k_tiles]
        if self.kernel is not None:
            words, shifts = self.gather[layer.inner_k_tiles]
            grid = (layer.weight_packed.shape[0], layer.weight_packed.shape[1])
            self.kernel[grid](layer.weight_packed, layer.weight_scales_zeros, words, shifts, out, n, k,
                              layer.group_size, TILE_ROWS=layout.rows, TILE_COLS=layout.cols)
            return out
        scales = layer.weight_scales_zeros.permute(1, 0, 2)  # [N, K/g, 2]
        tiles_per_chunk = max(1, _CHUNK_VALUES // (k * layout.rows))
        for first in range(0, layer.weight_packed.shape[0], tiles_per_chunk):
            packed = layer.weight_packed[first: first + tiles_per_chunk]  # [c, K/cols, 32, tiles/2]
            count = packed.shape[0]
            nibbles = torch.empty(count, packed.shape[1], layout.rows * layout.cols, dtype=torch.uint8,
                                  device=self.device)
            nibbles[..., layout.order] = _nibbles(packed.flatten(2), self.shifts)  # -> row-major in each tile
            u = nibbles.view(count, -1, layout.rows, layout.cols).transpose(1, 2).reshape(count * layout.rows, k)
            row_slice = slice(first * layout.rows, min(n, (first + count) * layout.rows))
            pair = scales[row_slice]
            values = (u[: row_slice.stop - row_slice.start].float() - 8).view(-1, k // layer.group_size,
                                                                              layer.group_size)
            values = values * pair[..., 0:1].float() + pair[..., 1:2].float()
            out[row_slice] = values.view(-1, k)
        return out


def _triton_dequantize():  # noqa: ANN202 (a Triton JIT function, or None)
    """The Triton unpacking kernel, or None where Triton is missing (it ships with torch's CUDA wheels)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def dequantize(packed, scales_zeros, words, shifts, out, n, k, group, TILE_ROWS: tl.constexpr,
                   TILE_COLS: tl.constexpr):
        # one program per tile: TILE_ROWS rows x TILE_COLS inputs, stored as TILE_ROWS * TILE_COLS / 8 words
        tile_n, tile_k = tl.program_id(0), tl.program_id(1)
        position = tl.arange(0, TILE_ROWS * TILE_COLS)
        base = (tile_n * tl.num_programs(1) + tile_k) * (TILE_ROWS * TILE_COLS // 8)
        word = tl.load(packed + base + tl.load(words + position))
        nibble = (word >> tl.load(shifts + position)) & 15
        row = tile_n * TILE_ROWS + position // TILE_COLS
        col = tile_k * TILE_COLS + position % TILE_COLS
        pair = ((col // group) * n + row) * 2
        scale = tl.load(scales_zeros + pair).to(tl.float32)
        zero = tl.load(scales_zeros + pair + 1).to(tl.float32)
        value = (nibble.to(tl.float32) - 8.0) * scale + zero
        tl.store(out + row * k + col, value.to(tl.bfloat16, fp_downcast_rounding="rtne"), mask=row < n)

    return dequantize


def attach_dequantizers(model: nn.Module, device: torch.device) -> bool:
    """Give every tinygemm layer of `model` the dequantize + cuBLAS path for many rows, if tinygemm's layout is
    understood here and the first layer's dequantized weight reproduces tinygemm's own product. Returns whether
    it was attached (else tinygemm serves every call: correct, slower for long prompts)."""
    layers = [m for m in model.modules() if isinstance(m, TinyGemmInt4Linear)]
    if not layers:
        return False
    layouts: dict[int, TileLayout] = {}
    for tiles in {layer.inner_k_tiles for layer in layers}:
        found = TileLayout.discover(device, tiles)
        if found is None:
            log.warning("tinygemm's int4 layout is not the one expected; long prompts use tinygemm (slower)")
            return False
        layouts[tiles] = found
    probe = layers[0]
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(16, probe.in_features, device=device, generator=generator).to(torch.bfloat16)
    fused = torch.ops.aten._weight_int4pack_mm(x, probe.weight_packed, probe.group_size,
                                               probe.weight_scales_zeros).float()
    for use_triton in (True, False):
        dequantizer = Dequantizer(layouts, device, use_triton)
        if use_triton and dequantizer.kernel is None:
            continue
        try:
            unpacked = F.linear(x, dequantizer.weight(probe)).float()
        except Exception as exc:  # noqa: BLE001 (a Triton that cannot compile here: the PyTorch unpacking)
            log.warning("the Triton int4 unpacking failed (%s); using PyTorch ops", exc)
            continue
        error = float((fused - unpacked).norm() / fused.norm().clamp_min(1e-30))
        if error < 1e-2:
            dequantizer.scratch = None  # allocated again by the first long prompt
            for layer in layers:
                layer.dequantizer = dequantizer
            return True
        log.warning("int4 weights unpacked %s differ from tinygemm's (relative error %.3g)",
                    "by Triton" if use_triton else "by PyTorch", error)
    log.warning("long prompts of int4 weights use tinygemm (slower)")
    return False
