"""Builds ``virtiofsd.native._native``, the compiled virtqueue path (cffi API mode).

Run by setuptools at install time (``cffi_modules`` in setup.py); by hand for a checkout:
``python core/native/build.py`` compiles the module next to this file.  The declarations are the
C header itself, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["split_ring.c", "ring_io.c"]

ffibuilder = cffi.FFI()
ffibuilder.cdef((HERE / "split_ring.h").read_text())
ffibuilder.set_source(
    "virtiofsd.native._native",
    '#include <stdint.h>\n#include "split_ring.h"\n',
    # Relative paths: setuptools refuses absolute ones (it runs this from the repository root).
    sources=[os.path.relpath(HERE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=False)
