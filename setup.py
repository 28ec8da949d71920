"""The one compiled part: facerec._scan, the face index's scan (facerec/_scan.c).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built
(no C compiler), the install goes on and the index uses its numpy scan, which gives the
same answers, slower (facerec/_kernels.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "facerec._scan", ["facerec/_scan.c"],
    # No FMA contraction: the encoder's float arithmetic must be numpy's, bit for bit.
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],
    optional=True)])
