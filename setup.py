"""Builds the optional C kernels; all metadata lives in pyproject.toml.

Both extensions are plain C against Python.h (no torch headers) and `optional=True`: if the compiler or the
flags are unavailable (non-x86, MSVC, no gcc), installation still succeeds and chatglm_tui.model.kernels falls
back to pure PyTorch. Nothing is ever compiled at run time.
"""

from setuptools import Extension, setup

_FLAGS = dict(extra_compile_args=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"], extra_link_args=["-fopenmp"],
              optional=True)

setup(
    ext_modules=[
        Extension("chatglm_tui.model.kernels._cpu", sources=["chatglm_tui/model/kernels/_cpu.c"], **_FLAGS),
        Extension("chatglm_tui.model.kernels._attention", sources=["chatglm_tui/model/kernels/_attention.c"],
                  **_FLAGS),
    ]
)
