"""Builds ``virtiofsd.native._native``, the compiled hot paths (cffi API mode): the virtqueue
(split_ring.c, ring_io.c) and READDIR's record conversion (dirents.c).

Run by setuptools at install time (``cffi_modules`` in setup.py): ``pip install -e .`` in a
checkout puts the module next to this file (scripts/install-deps.sh does that).  The
declarations are the C headers themselves, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import pathlib

import cffi

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["split_ring.c", "ring_io.c", "dirents.c"]
HEADERS = ["split_ring.h", "dirents.h"]

ffibuilder = cffi.FFI()
ffibuilder.cdef("\n".join((HERE / name).read_text() for name in HEADERS))
ffibuilder.set_source(
    "virtiofsd.native._native",
    "#include <stdint.h>\n" + "".join(f'#include "{name}"\n' for name in HEADERS),
    # Relative paths: setuptools refuses absolute ones (it runs this from the repository root).
    sources=[os.path.relpath(HERE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"],
    # Without a C compiler the install goes on and the daemon runs its Python paths instead.
    optional=True,
)
