"""Parse the ``linux_dirent64`` records that ``getdents64(2)`` writes.

Layout (``include/linux/dirent.h``), native byte order, no padding between the fields::

    u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[];  /* NUL-terminated */

``d_reclen`` covers the whole record including the name, its NUL and the padding up to 8 bytes.
``d_off`` is the file-system's opaque cookie for "the position after this entry": lseek(2) to it
and the next getdents64 continues there, which is why READDIR hands it to the guest as the
entry's offset.

Pure code over bytes: the kernel's records are trusted less than blindly, so a record whose
length is impossible raises ``ValueError`` instead of looping or reading past the buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

_HEADER = struct.Struct("=QqHB")


class Dirent64(NamedTuple):
    ino: int
    offset: int
    dtype: int
    name: bytes


def parse_dirents64(data: bytes | bytearray | memoryview) -> Iterator[Dirent64]:
    """The records packed in ``data`` (what getdents64 returned), in order.

    :raises ValueError: a record is shorter than its header or runs past the end of ``data``.
    """
    view = memoryview(data)
    end = len(view)
    position = 0
    header_size = _HEADER.size
    while position < end:
        if end - position < header_size:
            raise ValueError(f"truncated linux_dirent64 header at byte {position} of {end}")
        ino, offset, reclen, dtype = _HEADER.unpack_from(view, position)
        if reclen <= header_size or position + reclen > end:
            raise ValueError(f"linux_dirent64 at byte {position} has impossible length {reclen}")
        raw_name = bytes(view[position + header_size:position + reclen])
        nul = raw_name.find(b"\0")
        yield Dirent64(ino, offset, dtype, raw_name if nul < 0 else raw_name[:nul])
        position += reclen
