"""The FUSE kernel ABI, protocol 7.38, as plain constants and precompiled structs.

This module is the vocabulary shared by the codec, the router, the plugins and the test front-end.
It mirrors ``include/uapi/linux/fuse.h`` (Debian's linux-libc-dev): names drop the ``fuse_``/``FUSE_``
prefix, struct layouts are ``struct.Struct`` objects named after the kernel struct in upper case
(``struct fuse_entry_out`` -> ``ENTRY_OUT``).  Everything is little-endian with explicit padding
fields, and every size is asserted against the kernel header at import, so a typo fails loudly.

It holds no logic and performs no I/O.
"""

from __future__ import annotations

import enum
import struct

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38
#: The oldest minor version we accept from a guest (the Rust daemon's floor).
MIN_SUPPORTED_MINOR = 27
ROOT_ID = 1

#: Largest READ/WRITE payload we negotiate: 256 pages of 4 KiB, as both reference daemons.
MAX_PAGES = 256
MAX_WRITE = MAX_PAGES * 4096
#: Largest request we accept in one chain: a full write plus headers (the Rust daemon's bound).
MAX_REQUEST_SIZE = MAX_WRITE + 4096


class Opcode(enum.IntEnum):
    """``enum fuse_opcode``."""

    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class InitFlag(enum.IntFlag):
    """INIT flags; bits 32..63 travel in ``flags2`` (only when INIT_EXT is set)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    ALLOW_IDMAP = 1 << 40


# SETATTR valid bits (FATTR_*).
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# open_out.open_flags (FOPEN_*).
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# Assorted request flags.
RELEASE_FLUSH = 1 << 0
RELEASE_FLOCK_UNLOCK = 1 << 1
GETATTR_FH = 1 << 0
LK_FLOCK = 1 << 0
WRITE_CACHE = 1 << 0
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
READ_LOCKOWNER = 1 << 1
FSYNC_FDATASYNC = 1 << 0
ATTR_SUBMOUNT = 1 << 0
ATTR_DAX = 1 << 1
OPEN_KILL_SUIDGID = 1 << 0
SETXATTR_ACL_KILL_SGID = 1 << 0

#: Extension types above this number are not security contexts (``fuse_ext_type``).
MAX_NR_SECCTX = 31
EXT_SUP_GROUPS = 32

_LE = "<"


def _layout(fields: str, size: int) -> struct.Struct:
    layout = struct.Struct(_LE + fields)
    assert layout.size == size, (fields, layout.size, size)
    return layout


# --- Headers -------------------------------------------------------------------------------------
#: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = _layout("IIQQIIIHH", 40)
#: len, error (negative errno), unique
OUT_HEADER = _layout("IiQ", 16)

# --- Attributes ----------------------------------------------------------------------------------
#: ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode, nlink, uid, gid,
#: rdev, blksize, flags
ATTR = _layout("QQQQQQIIIIIIIIII", 88)
#: nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec (+ ATTR)
ENTRY_OUT_HEAD = _layout("QQQQII", 40)
ENTRY_OUT = _layout("QQQQII" + "QQQQQQIIIIIIIIII", 128)
#: attr_valid, attr_valid_nsec, dummy (+ ATTR)
ATTR_OUT_HEAD = _layout("QII", 16)
ATTR_OUT = _layout("QII" + "QQQQQQIIIIIIIIII", 104)
#: blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
KSTATFS = _layout("QQQQQIIII24x", 80)
STATFS_OUT = KSTATFS

# --- Requests and replies ------------------------------------------------------------------------
FORGET_IN = _layout("Q", 8)  # nlookup
FORGET_ONE = _layout("QQ", 16)  # nodeid, nlookup
BATCH_FORGET_IN = _layout("II", 8)  # count, dummy
GETATTR_IN = _layout("IIQ", 16)  # getattr_flags, dummy, fh
MKNOD_IN = _layout("IIII", 16)  # mode, rdev, umask, padding
MKDIR_IN = _layout("II", 8)  # mode, umask
RENAME_IN = _layout("Q", 8)  # newdir
RENAME2_IN = _layout("QII", 16)  # newdir, flags, padding
LINK_IN = _layout("Q", 8)  # oldnodeid
#: valid, padding, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
#: mode, unused4, uid, gid, unused5
SETATTR_IN = _layout("IIQQQQQQIIIIIIII", 88)
OPEN_IN = _layout("II", 8)  # flags, open_flags
CREATE_IN = _layout("IIII", 16)  # flags, mode, umask, open_flags
OPEN_OUT = _layout("QII", 16)  # fh, open_flags, padding
RELEASE_IN = _layout("QIIQ", 24)  # fh, flags, release_flags, lock_owner
FLUSH_IN = _layout("QIIQ", 24)  # fh, unused, padding, lock_owner
#: fh, offset, size, read_flags, lock_owner, flags, padding
READ_IN = _layout("QQIIQII", 40)
#: fh, offset, size, write_flags, lock_owner, flags, padding
WRITE_IN = _layout("QQIIQII", 40)
WRITE_OUT = _layout("II", 8)  # size, padding
FSYNC_IN = _layout("QII", 16)  # fh, fsync_flags, padding
SETXATTR_IN = _layout("IIII", 16)  # size, flags, setxattr_flags, padding
SETXATTR_IN_COMPAT = _layout("II", 8)  # size, flags (without SETXATTR_EXT)
GETXATTR_IN = _layout("II", 8)  # size, padding
GETXATTR_OUT = _layout("II", 8)  # size, padding
FILE_LOCK = _layout("QQII", 24)  # start, end, type, pid
#: fh, owner, lk.start, lk.end, lk.type, lk.pid, lk_flags, padding
LK_IN = _layout("QQQQIIII", 48)
LK_OUT = FILE_LOCK
ACCESS_IN = _layout("II", 8)  # mask, padding
#: major, minor, max_readahead, flags, flags2, unused[11]
INIT_IN = _layout("IIIII44x", 64)
#: The pre-INIT_EXT init_in: major, minor, max_readahead, flags
INIT_IN_COMPAT = _layout("IIII", 16)
#: major, minor, max_readahead, flags, max_background, congestion_threshold, max_write, time_gran,
#: max_pages, map_alignment, flags2, unused[7]
INIT_OUT = _layout("IIIIHHIIHHI28x", 64)
INTERRUPT_IN = _layout("Q", 8)  # unique
BMAP_IN = _layout("QII", 16)  # block, blocksize, padding
BMAP_OUT = _layout("Q", 8)
#: fh, flags, cmd, arg, in_size, out_size
IOCTL_IN = _layout("QIIQII", 32)
POLL_IN = _layout("QQII", 24)  # fh, kh, flags, events
#: fh, offset, length, mode, padding
FALLOCATE_IN = _layout("QQQII", 32)
LSEEK_IN = _layout("QQII", 24)  # fh, offset, whence, padding
LSEEK_OUT = _layout("Q", 8)
#: fh_in, off_in, nodeid_out, fh_out, off_out, len, flags
COPY_FILE_RANGE_IN = _layout("QQQQQQQ", 56)
SYNCFS_IN = _layout("Q", 8)  # padding

# --- Directory entries ---------------------------------------------------------------------------
#: ino, off, namelen, type (the name follows, padded to 8 bytes)
DIRENT = _layout("QQII", 24)

# --- Request extensions (after the request body, total_extlen * 8 bytes) ------------------------
EXT_HEADER = _layout("II", 8)  # size, type
SECCTX_HEADER = _layout("II", 8)  # size, nr_secctx
SECCTX = _layout("II", 8)  # size, padding
SUPP_GROUPS = _layout("I", 4)  # nr_groups, then u32 groups


def dirent_size(namelen: int) -> int:
    """Size of one ``fuse_dirent`` record with a name of ``namelen`` bytes, 8-byte aligned."""
    return (DIRENT.size + namelen + 7) & ~7


def direntplus_size(namelen: int) -> int:
    """Size of one ``fuse_direntplus`` record (entry_out + dirent + name), 8-byte aligned."""
    return (ENTRY_OUT.size + DIRENT.size + namelen + 7) & ~7
