"""Checkpoint + backend -> a ready ChatGLMForCausalLM: the one loader behind the chat, `ask`, `bench` and the API.

The backend builds its module tree on the meta device; the converter streams the checkpoint's tensors into the
buffers it asks for; they are assigned in place (no second copy). A backend whose converted weights are worth
keeping (the CPU kernels' layout: quantizing an fp16 checkpoint takes minutes) goes through a cache file in the
directory the caller passes, memory-mapped on later loads; a damaged or stale cache is rebuilt, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from chatglm_tui.model.backends.base import Backend
from chatglm_tui.model.checkpoint import Checkpoint, read_weight_file
from chatglm_tui.model.convert import Sink, WeightConverter
from chatglm_tui.model.modeling import ChatGLMForCausalLM
from chatglm_tui.model.quant_cache import (
    CacheMiss,
    CacheWriter,
    Specs,
    cache_location,
    read_cache,
    remove_stale_partials,
    source_key,
)

log = logging.getLogger(__name__)
# progress(stage, done, total): stage "read" (weight files, or the cache file) or "quantize" (tensors converted
# into the backend's own format)
Progress = Callable[[str, int, int], None]


def load(checkpoint: Checkpoint, backend: Backend, cache_dir: Path | None = None,
         progress: Progress | None = None) -> ChatGLMForCausalLM:
    """The checkpoint's model, as `backend` runs it. `cache_dir`: where converted weights may be cached (None:
    never cached)."""
    model = backend.build(checkpoint.config)
    if backend.cache_tag is not None and cache_dir is not None:
        tensors = _through_cache(checkpoint, backend, model, cache_dir, progress)
    else:
        tensors = _in_memory(checkpoint, backend, model, progress)
    model.load_state_dict(tensors, strict=True, assign=True)
    return backend.finish(model)


def convert(checkpoint: Checkpoint, backend: Backend, model: ChatGLMForCausalLM, sink: Sink,
            progress: Progress | None = None) -> None:
    """Stream every tensor of the checkpoint through `backend` into `sink`."""
    converting = backend.cache_tag is not None  # a format change worth reporting tensor by tensor

    def counting_sink(name: str, tensor: Tensor) -> None:
        sink(name, tensor)
        if progress:
            progress("quantize", len(converter.emitted) + 1, converter.total)

    converter = WeightConverter(checkpoint.config, backend, model, counting_sink if converting else sink)
    files = checkpoint.weight_files
    for index, path in enumerate(files):
        if progress and not converting:
            progress("read", index, len(files))
        for name, tensor in read_weight_file(path):
            converter.add(name, tensor, path)
    if progress and not converting:
        progress("read", len(files), len(files))
    converter.finish()


def _in_memory(checkpoint: Checkpoint, backend: Backend, model: ChatGLMForCausalLM,
               progress: Progress | None) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    convert(checkpoint, backend, model, tensors.__setitem__, progress)
    return tensors


def _specs(model: ChatGLMForCausalLM) -> Specs:
    return {name: (t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()}


def _through_cache(checkpoint: Checkpoint, backend: Backend, model: ChatGLMForCausalLM, cache_dir: Path,
                   progress: Progress | None) -> dict[str, Tensor]:
    tag = backend.cache_tag
    assert tag is not None
    key = source_key(checkpoint.source_files, backend.cache_fields())
    target, specs = cache_location(cache_dir, checkpoint.directory, tag), _specs(model)
    remove_stale_partials(target.parent)  # what killed builds left, before this load reads or builds the cache
    metadata = {"source_key": key, "scheme": tag, "source": str(checkpoint.directory.resolve())}
    try:
        if progress:
            progress("read", 0, 1)
        tensors = read_cache(target, metadata, specs)[0]
        if progress:
            progress("read", 1, 1)
        return tensors
    except CacheMiss as miss:  # absent, stale or damaged in any way: rebuild it, never fail
        log.info("converted-weights cache %s: %s; building it", target, miss)
    if not _build_cache(checkpoint, backend, model, target, specs, metadata, progress):
        return _in_memory(checkpoint, backend, model, progress)
    try:
        return read_cache(target, metadata, specs)[0]
    except CacheMiss as miss:  # replaced or damaged since it was written (another process, the disk)
        log.warning("the converted-weights cache %s cannot be read back (%s); converting in memory", target, miss)
        return _in_memory(checkpoint, backend, model, progress)


def _build_cache(checkpoint: Checkpoint, backend: Backend, model: ChatGLMForCausalLM, target: Path, specs: Specs,
                 metadata: dict[str, str], progress: Progress | None) -> bool:
    """Convert the checkpoint into the cache file `target`; False (with a warning) when it cannot be written."""
    try:
        writer = CacheWriter(target, specs, metadata)
    except OSError as exc:  # read-only cache directory: convert in memory, every time
        log.warning("cannot write the converted-weights cache at %s (%s); converting in memory", target, exc)
        return False
    try:
        convert(checkpoint, backend, model, writer.write, progress)
        writer.commit()
    except OSError as exc:  # the disk filled up while writing: drop the partial file, keep going in memory
        writer.abort()
        log.warning("could not finish the converted-weights cache at %s (%s); converting in memory", target, exc)
        return False
    except BaseException:
        writer.abort()
        raise
    return True
