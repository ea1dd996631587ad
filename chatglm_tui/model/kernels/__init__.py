"""CPU int4/int8 matmul kernels (AVX2 C extension with a pure-PyTorch fallback)."""
