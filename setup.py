"""Build the two compiled extensions, vyre_uring._ring and vyre_uring._engine (Cython over
raw io_uring syscalls).

VYRE_URING_DEBUG=1 builds it with AddressSanitizer, UBSan and the engine's internal
invariant checks (VY_DEBUG).
"""
import os
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit("vyre_uring needs Linux: io_uring is a Linux kernel interface")

import Cython  # noqa: E402
from Cython.Build import cythonize  # noqa: E402

debug = os.environ.get("VYRE_URING_DEBUG") == "1"
compile_args = ["-O3", "-Wall", "-Wno-unused-function"]
link_args = []
if debug:
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    link_args = ["-fsanitize=address,undefined"]



def extension(name):
    return Extension(
        f"vyre_uring.{name}",
        [f"vyre_uring/{name}.pyx"],
        include_dirs=["vyre_uring/includes"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=["NDEBUG"] if debug else [],
        # Recorded for benchmark reports: Cython is a build dependency, gone at run time.
        define_macros=[("VYRE_CYTHON_VERSION", f'"{Cython.__version__}"')]
        + ([("VY_DEBUG", "1")] if debug else []),
    )


# _ring: the kernel ABI, the queues and the Ring API; _engine: the reader's jobs,
# built on _ring's C API (_ring.pxd).
setup(ext_modules=cythonize([extension("_ring"), extension("_engine")],
                            compiler_directives={"language_level": 3}, include_path=["."]))
