"""The compiled hot paths, when they were built.

``lib`` and ``ffi`` are the cffi module built from ``split_ring.c``, ``ring_io.c`` and
``dirents.c`` by :mod:`build` at install time, or ``None`` when it was not built (a checkout
nobody installed, a machine without a C compiler): the Python code each replaces
(:mod:`virtiofsd.virtio.split_queue`, :mod:`virtiofsd.fuse.dirents`) then does the same work,
more slowly.  ``VIRTIOFSD_PURE_PYTHON=1`` in the environment chooses
the Python path on purpose (to compare the two, or to rule the compiled one out).
"""

from __future__ import annotations

import os
from typing import Any

ffi: Any
lib: Any

if os.environ.get("VIRTIOFSD_PURE_PYTHON") == "1":
    ffi = lib = None
else:
    try:
        from virtiofsd.native._native import ffi, lib
    except ImportError:
        ffi = lib = None

__all__ = ["ffi", "lib"]
