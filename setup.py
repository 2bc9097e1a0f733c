"""Build of the optional C extension ``cellassign_nf._nbkernel`` (the fused CPU likelihood kernel,
``src/cellassign_nf/_nbkernel.c``); everything else is declared in pyproject.toml.

The extension is optional: without a C compiler the package installs without it and trains with
the plain PyTorch likelihood (the training log says so).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "cellassign_nf._nbkernel", ["src/cellassign_nf/_nbkernel.c"],
    # -fno-trapping-math / -fno-math-errno let the compiler vectorise the branch-free loops; no
    # -ffast-math (it would change the rounding mode of the whole process)
    extra_compile_args=["-O3", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno"],
    optional=True,
)])
