"""Compute kernels, used only by `model/backends/`: the CPU's int4/int8 weight-only linears and float16-cache
decode attention (a C extension whose instruction level, AVX-512 BF16 or AVX2, is chosen at run time; a
torch int4pack path and exact PyTorch math where it cannot run)."""
