"""Sans-IO FUSE codec: requests out of guest memory, replies back into it.

A virtio-fs request arrives as one descriptor chain: device-readable buffers holding
``fuse_in_header`` + arguments (+ request extensions), device-writable buffers for
``fuse_out_header`` + the reply body.  The layer above hands both over as lists of byte-format
memoryviews (``format 'B'``) straight into guest memory.  The request may be split across the
readable buffers anywhere; the Linux guest puts the header in one buffer, the fixed arguments in
the next, and WRITE data page by page after that, and reserves the 16-byte reply header in a
buffer of its own.

Everything the guest wrote is hostile.  Each length is checked against what the chain really
holds before it is used, each fixed struct is unpacked once (a guest rewriting its memory while
we look cannot make two reads disagree), and names are copied to ``bytes``.  Breaches raise
:class:`~virtiofsd.errors.GuestProtocolError` (the router answers EINVAL); sizes beyond what the
session negotiated raise ``FuseError(ENOMEM)``, as the Rust daemon answers.

WRITE data and the READ reply area are never copied: the hooks get memoryview slices of guest
memory (``data`` for WRITE, a :class:`ReplySink` for READ).

:data:`OPERATIONS` maps each opcode served by a hook to the hook's name and the decoder that
turns the argument bytes into the hook's keyword arguments (see
:mod:`virtiofsd.hookspecs.fuse_ops`).  INIT, DESTROY and INTERRUPT are the router's business.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from virtiofsd.errors import FuseError, GuestProtocolError
from virtiofsd.fuse import abi
from virtiofsd.fuse.context import Request

IN_HEADER_SIZE = abi.IN_HEADER.size
OUT_HEADER_SIZE = abi.OUT_HEADER.size
_MAX_REQUEST_SIZE = abi.MAX_REQUEST_SIZE

_NS = 1_000_000_000
_SIGN_BIT = 1 << 63
_U64 = 1 << 64

Buffer = Any  # bytes or a byte-format memoryview
Views = Sequence[memoryview]


# --- Locating bytes in a chain ------------------------------------------------------------------


def _window(views: Views, start: int, end: int) -> tuple[list[memoryview], int]:
    """Slices of ``views`` (seen as one stream) covering ``[start, end)``, as far as they reach.

    :returns: the slices and the stream position where they stop (``end`` when complete).
    """
    out: list[memoryview] = []
    pos = 0
    for view in views:
        size = len(view)
        stop = pos + size
        if stop > start:
            lo = start - pos if start > pos else 0
            hi = end - pos if end < stop else size
            if hi > lo:
                # A whole buffer goes as it is (WRITE data: one page per buffer).
                out.append(view if hi - lo == size else view[lo:hi])
            if stop >= end:
                return out, end
        pos = stop
    return out, max(pos, start) if pos < end else end


def gather(views: Views, start: int, end: int) -> list[memoryview]:
    """Slices of ``views`` covering exactly ``[start, end)``; GuestProtocolError if too short."""
    out, reached = _window(views, start, end)
    if reached < end:
        raise GuestProtocolError(f"request claims bytes up to offset {end}, "
                                 f"the buffers hold {reached}")
    return out


def _contiguous(views: Views, start: int, end: int) -> Buffer:
    """``[start, end)`` as one buffer: a view when one buffer holds it, else a copy."""
    pieces = gather(views, start, end)
    if len(pieces) == 1:
        return pieces[0]
    return b"".join(pieces)


# --- The request header -------------------------------------------------------------------------


def read_header(readable: Views) -> tuple[int, ...]:
    """Unpack ``fuse_in_header``: (len, opcode, unique, nodeid, uid, gid, pid, total_extlen,
    padding).  GuestProtocolError when the chain holds fewer than 40 bytes."""
    if readable and len(readable[0]) >= IN_HEADER_SIZE:
        return abi.IN_HEADER.unpack_from(readable[0])
    pieces, reached = _window(readable, 0, IN_HEADER_SIZE)
    if reached < IN_HEADER_SIZE:
        raise GuestProtocolError(f"chain of {reached} readable bytes has no FUSE header")
    return abi.IN_HEADER.unpack(b"".join(pieces))


class Operation(NamedTuple):
    """How one opcode is served: the hook and the decoder of its arguments.

    ``decode(args, nodeid, session)`` returns the hook's keyword arguments (``req`` excepted).
    ``args`` is one buffer, or for a ``scatter`` decoder the list of views it is spread over
    (WRITE, whose data must not be copied).
    """

    hook_name: str
    decode: Callable[[Any, int, Any], dict[str, Any]]
    scatter: bool = False


def decode_request(readable: Views, header: tuple[int, ...], operation: Operation,
                   session: Any) -> tuple[Request, dict[str, Any]]:
    """Check the header's lengths against the chain, then decode the arguments.

    :returns: the request context (with its extensions applied) and the hook's keyword
        arguments, ``req`` not included.
    :raises GuestProtocolError: lengths that lie or arguments that do not parse.
    :raises FuseError: ENOMEM for a request larger than we ever negotiate (as Rust).
    """
    length, opcode, unique, nodeid, uid, gid, pid, total_extlen, _padding = header
    if length < IN_HEADER_SIZE:
        raise GuestProtocolError(f"header length {length} is shorter than the header")
    if length > _MAX_REQUEST_SIZE:
        raise FuseError(errno.ENOMEM, f"request of {length} bytes exceeds "
                        f"{_MAX_REQUEST_SIZE}")
    args_end = length - total_extlen * 8
    if args_end < IN_HEADER_SIZE:
        raise GuestProtocolError(f"{total_extlen * 8} bytes of extensions do not fit a "
                                 f"request of {length} bytes")
    # The arguments as one view when one buffer holds them (the usual layouts: arguments
    # after the header in the same buffer, or alone in the next one), else as pieces.
    first = readable[0]
    args: Buffer | None = None
    if len(first) >= args_end:
        args = first[IN_HEADER_SIZE:args_end]
    elif len(first) == IN_HEADER_SIZE and len(readable) > 1:
        second = readable[1]
        if len(second) >= args_end - IN_HEADER_SIZE:
            args = second[:args_end - IN_HEADER_SIZE]
    req = Request(unique, opcode, nodeid, uid, gid, pid, session)
    if args_end < length:
        apply_extensions(req, b"".join(gather(readable, args_end, length)))
    if args is not None:
        return req, operation.decode([args] if operation.scatter else args, nodeid, session)
    segments = gather(readable, IN_HEADER_SIZE, args_end)
    if operation.scatter:
        return req, operation.decode(segments, nodeid, session)
    if len(segments) == 1:
        return req, operation.decode(segments[0], nodeid, session)
    return req, operation.decode(b"".join(segments), nodeid, session)


# --- Request extensions -------------------------------------------------------------------------


def apply_extensions(req: Request, ext: bytes) -> None:
    """Parse the ``fuse_ext_header`` records of ``ext`` into ``req``.

    Each record is ``{u32 size; u32 type}`` + payload, ``size`` counting the header and a
    multiple of 8.  Types up to ``MAX_NR_SECCTX`` are a security-context block (the type is the
    number of contexts); ``EXT_SUP_GROUPS`` lists supplementary groups; other types are skipped.
    """
    offset = 0
    total = len(ext)
    while offset < total:
        if total - offset < abi.EXT_HEADER.size:
            raise GuestProtocolError(f"truncated extension header at offset {offset}")
        size, ext_type = abi.EXT_HEADER.unpack_from(ext, offset)
        if size < abi.EXT_HEADER.size or size % 8 or size > total - offset:
            raise GuestProtocolError(f"extension of type {ext_type} claims {size} bytes, "
                                     f"{total - offset} remain")
        record = ext[offset:offset + size]
        if ext_type == abi.EXT_SUP_GROUPS:
            req.supplementary_groups = _supplementary_groups(record)
        elif ext_type <= abi.MAX_NR_SECCTX:
            req.security_context = _security_context(record, ext_type)
        offset += size


def _supplementary_groups(record: bytes) -> tuple[int, ...]:
    start = abi.EXT_HEADER.size + abi.SUPP_GROUPS.size
    if len(record) < start:
        raise GuestProtocolError("supplementary-groups extension without a group count")
    (count,) = abi.SUPP_GROUPS.unpack_from(record, abi.EXT_HEADER.size)
    if count * 4 > len(record) - start:
        raise GuestProtocolError(f"supplementary-groups extension claims {count} groups in "
                                 f"{len(record)} bytes")
    return struct.unpack_from(f"<{count}I", record, start)


def _security_context(record: bytes, count: int) -> tuple[bytes, bytes] | None:
    """The (xattr name, value) of a security-context block; the kernel sends at most one."""
    if count == 0:
        return None
    if count > 1:
        raise GuestProtocolError(f"{count} security contexts; at most one is supported")
    name_start = abi.EXT_HEADER.size + abi.SECCTX.size
    if len(record) < name_start:
        raise GuestProtocolError("security-context extension too short")
    (value_size, _padding) = abi.SECCTX.unpack_from(record, abi.EXT_HEADER.size)
    name_end = record.find(b"\0", name_start)
    if name_end < 0:
        raise GuestProtocolError("security-context name is not NUL-terminated")
    value_start = name_end + 1
    if value_size > len(record) - value_start:
        raise GuestProtocolError(f"security context claims {value_size} bytes, "
                                 f"{len(record) - value_start} remain")
    return record[name_start:name_end], record[value_start:value_start + value_size]


# --- Argument helpers ---------------------------------------------------------------------------


def _fixed(layout: struct.Struct, args: Buffer, what: str) -> tuple[int, ...]:
    """Unpack the fixed struct at the start of ``args``; trailing bytes are allowed (a newer
    minor version may have grown the struct)."""
    if len(args) < layout.size:
        raise GuestProtocolError(f"{what}: {len(args)} bytes of arguments, "
                                 f"{layout.size} needed")
    return layout.unpack_from(args)


def _names(buf: Buffer, count: int, what: str) -> list[bytes]:
    """Exactly ``count`` NUL-terminated strings filling ``buf``, without their NULs."""
    data = bytes(buf)
    if count == 1:
        # The common case (LOOKUP, UNLINK, ...): the only NUL is the last byte.
        end = data.find(b"\0")
        if end < 0 or end != len(data) - 1:
            raise GuestProtocolError(f"{what}: expected 1 NUL-terminated name(s) filling "
                                     f"{len(buf)} bytes")
        return [data[:end]]
    parts = data.split(b"\0")
    if len(parts) != count + 1 or parts[count]:
        raise GuestProtocolError(f"{what}: expected {count} NUL-terminated name(s) filling "
                                 f"{len(buf)} bytes")
    del parts[count]
    return parts


def _signed(value: int) -> int:
    """A u64 on the wire that the kernel meant as s64 (times before 1970)."""
    return value - _U64 if value & _SIGN_BIT else value


def _limit(size: int, what: str) -> None:
    if size > abi.MAX_WRITE:
        raise FuseError(errno.ENOMEM, f"{what} of {size} bytes exceeds {abi.MAX_WRITE}")


# --- Decoders, one per opcode -------------------------------------------------------------------


def _lookup(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (name,) = _names(args, 1, "LOOKUP")
    return {"parent": nodeid, "name": name}


def _forget(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (nlookup,) = _fixed(abi.FORGET_IN, args, "FORGET")
    return {"nodeid": nodeid, "nlookup": nlookup}


def _batch_forget(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    count, _dummy = _fixed(abi.BATCH_FORGET_IN, args, "BATCH_FORGET")
    start = abi.BATCH_FORGET_IN.size
    end = start + count * abi.FORGET_ONE.size
    if end > len(args):
        raise GuestProtocolError(f"BATCH_FORGET: {count} entries claimed, "
                                 f"{len(args) - start} bytes hold them")
    return {"forgets": list(abi.FORGET_ONE.iter_unpack(args[start:end]))}


def _getattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    getattr_flags, _dummy, fh = _fixed(abi.GETATTR_IN, args, "GETATTR")
    return {"nodeid": nodeid, "fh": fh if getattr_flags & abi.GETATTR_FH else None}


def _setattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (valid, _padding, fh, size, _lock_owner, atime, mtime, _ctime, atimensec, mtimensec,
     _ctimensec, mode, _unused4, uid, gid, _unused5) = _fixed(abi.SETATTR_IN, args, "SETATTR")
    return {
        "nodeid": nodeid,
        "valid": valid,
        "fh": fh if valid & abi.FATTR_FH else None,
        "mode": mode,
        "uid": uid,
        "gid": gid,
        "size": size,
        "atime_ns": _signed(atime) * _NS + atimensec,
        "mtime_ns": _signed(mtime) * _NS + mtimensec,
    }


def _nodeid_only(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    return {"nodeid": nodeid}


def _symlink(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    name, target = _names(args, 2, "SYMLINK")
    return {"parent": nodeid, "name": name, "target": target}


def _mknod(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    mode, rdev, umask, _padding = _fixed(abi.MKNOD_IN, args, "MKNOD")
    (name,) = _names(args[abi.MKNOD_IN.size:], 1, "MKNOD")
    return {"parent": nodeid, "name": name, "mode": mode, "rdev": rdev, "umask": umask}


def _mkdir(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    mode, umask = _fixed(abi.MKDIR_IN, args, "MKDIR")
    (name,) = _names(args[abi.MKDIR_IN.size:], 1, "MKDIR")
    return {"parent": nodeid, "name": name, "mode": mode, "umask": umask}


def _unlink(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (name,) = _names(args, 1, "UNLINK/RMDIR")
    return {"parent": nodeid, "name": name}


def _rename(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (newdir,) = _fixed(abi.RENAME_IN, args, "RENAME")
    name, newname = _names(args[abi.RENAME_IN.size:], 2, "RENAME")
    return {"parent": nodeid, "name": name, "newparent": newdir, "newname": newname,
            "flags": 0}


def _rename2(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    newdir, flags, _padding = _fixed(abi.RENAME2_IN, args, "RENAME2")
    name, newname = _names(args[abi.RENAME2_IN.size:], 2, "RENAME2")
    return {"parent": nodeid, "name": name, "newparent": newdir, "newname": newname,
            "flags": flags}


def _link(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (oldnodeid,) = _fixed(abi.LINK_IN, args, "LINK")
    (newname,) = _names(args[abi.LINK_IN.size:], 1, "LINK")
    return {"nodeid": oldnodeid, "newparent": nodeid, "newname": newname}


def _open(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    flags, open_flags = _fixed(abi.OPEN_IN, args, "OPEN")
    return {"nodeid": nodeid, "flags": flags, "open_flags": open_flags}


def _opendir(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    flags, _open_flags = _fixed(abi.OPEN_IN, args, "OPENDIR")
    return {"nodeid": nodeid, "flags": flags}


def _create(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    flags, mode, umask, open_flags = _fixed(abi.CREATE_IN, args, "CREATE")
    (name,) = _names(args[abi.CREATE_IN.size:], 1, "CREATE")
    return {"parent": nodeid, "name": name, "mode": mode, "flags": flags, "umask": umask,
            "open_flags": open_flags}


def _read(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, offset, size, _read_flags, _lock_owner, flags, _padding = _fixed(abi.READ_IN, args,
                                                                         "READ")
    _limit(size, "READ")
    return {"nodeid": nodeid, "fh": fh, "offset": offset, "size": size, "flags": flags}


def _write(segments: list[memoryview], nodeid: int, session: Any) -> dict[str, Any]:
    head_size = abi.WRITE_IN.size
    if segments and len(segments[0]) >= head_size:
        head: Buffer = segments[0]
    else:
        head = b"".join(gather(segments, 0, head_size)) if segments else b""
    fh, offset, size, write_flags, _lock_owner, flags, _padding = _fixed(abi.WRITE_IN, head,
                                                                         "WRITE")
    _limit(size, "WRITE")
    data, reached = _window(segments, head_size, head_size + size)
    if reached < head_size + size:
        raise GuestProtocolError(f"WRITE of {size} bytes carries {reached - head_size}")
    return {"nodeid": nodeid, "fh": fh, "offset": offset, "size": size,
            "write_flags": write_flags, "flags": flags, "data": data}


def _flush(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, _unused, _padding, lock_owner = _fixed(abi.FLUSH_IN, args, "FLUSH")
    return {"nodeid": nodeid, "fh": fh, "lock_owner": lock_owner}


def _release(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, flags, release_flags, lock_owner = _fixed(abi.RELEASE_IN, args, "RELEASE")
    return {"nodeid": nodeid, "fh": fh, "flags": flags, "release_flags": release_flags,
            "lock_owner": lock_owner}


def _releasedir(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, _flags, _release_flags, _lock_owner = _fixed(abi.RELEASE_IN, args, "RELEASEDIR")
    return {"nodeid": nodeid, "fh": fh}


def _fsync(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, fsync_flags, _padding = _fixed(abi.FSYNC_IN, args, "FSYNC")
    return {"nodeid": nodeid, "fh": fh, "datasync": bool(fsync_flags & abi.FSYNC_FDATASYNC)}


def _setxattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    if session.flags & abi.InitFlag.SETXATTR_EXT:
        size, flags, setxattr_flags, _padding = _fixed(abi.SETXATTR_IN, args, "SETXATTR")
        head_size = abi.SETXATTR_IN.size
    else:
        size, flags = _fixed(abi.SETXATTR_IN_COMPAT, args, "SETXATTR")
        setxattr_flags = 0
        head_size = abi.SETXATTR_IN_COMPAT.size
    rest = bytes(args[head_size:])
    name_end = rest.find(b"\0")
    if name_end < 0:
        raise GuestProtocolError("SETXATTR: name is not NUL-terminated")
    value = rest[name_end + 1:]
    if len(value) != size:
        raise GuestProtocolError(f"SETXATTR: value of {size} bytes claimed, "
                                 f"{len(value)} sent")
    return {"nodeid": nodeid, "name": rest[:name_end], "value": value, "flags": flags,
            "setxattr_flags": setxattr_flags}


def _getxattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    size, _padding = _fixed(abi.GETXATTR_IN, args, "GETXATTR")
    _limit(size, "GETXATTR")
    (name,) = _names(args[abi.GETXATTR_IN.size:], 1, "GETXATTR")
    return {"nodeid": nodeid, "name": name, "size": size}


def _listxattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    size, _padding = _fixed(abi.GETXATTR_IN, args, "LISTXATTR")
    _limit(size, "LISTXATTR")
    return {"nodeid": nodeid, "size": size}


def _removexattr(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    (name,) = _names(args, 1, "REMOVEXATTR")
    return {"nodeid": nodeid, "name": name}


def _access(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    mask, _padding = _fixed(abi.ACCESS_IN, args, "ACCESS")
    return {"nodeid": nodeid, "mask": mask}


def _readdir(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, offset, size, _read_flags, _lock_owner, _flags, _padding = _fixed(abi.READ_IN, args,
                                                                          "READDIR")
    _limit(size, "READDIR")
    return {"nodeid": nodeid, "fh": fh, "offset": offset, "size": size}


def _fallocate(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, offset, length, mode, _padding = _fixed(abi.FALLOCATE_IN, args, "FALLOCATE")
    return {"nodeid": nodeid, "fh": fh, "offset": offset, "length": length, "mode": mode}


def _lseek(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, offset, whence, _padding = _fixed(abi.LSEEK_IN, args, "LSEEK")
    return {"nodeid": nodeid, "fh": fh, "offset": offset, "whence": whence}


def _copy_file_range(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = _fixed(
        abi.COPY_FILE_RANGE_IN, args, "COPY_FILE_RANGE")
    return {"nodeid": nodeid, "fh_in": fh_in, "off_in": off_in, "nodeid_out": nodeid_out,
            "fh_out": fh_out, "off_out": off_out, "length": length, "flags": flags}


def _syncfs(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    _fixed(abi.SYNCFS_IN, args, "SYNCFS")
    return {"nodeid": nodeid}


def _init(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    """``fuse_init_in``, as the keyword arguments of :func:`virtiofsd.fuse.session.negotiate`.

    Guests before 7.36 send the 16-byte form; ``flags2`` is read only when INIT_EXT is set,
    and then the 64-byte form must be there.
    """
    major, minor, max_readahead, flags = _fixed(abi.INIT_IN_COMPAT, args, "INIT")
    flags2 = 0
    if flags & abi.InitFlag.INIT_EXT:
        flags2 = _fixed(abi.INIT_IN, args, "INIT with INIT_EXT")[4]
    return {"major": major, "minor": minor, "max_readahead": max_readahead, "flags": flags,
            "flags2": flags2}


def _lk(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    fh, owner, start, end, lock_type, pid, lk_flags, _padding = _fixed(abi.LK_IN, args, "LK")
    return {"nodeid": nodeid, "fh": fh, "owner": owner, "start": start, "end": end,
            "lock_type": lock_type, "pid": pid, "lk_flags": lk_flags}


def _setlk(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    return {**_lk(args, nodeid, session), "sleep": False}


def _setlkw(args: Buffer, nodeid: int, session: Any) -> dict[str, Any]:
    return {**_lk(args, nodeid, session), "sleep": True}


#: INIT is decoded like any request, but the router negotiates before it calls the hook.
INIT = Operation("virtiofsd_fuse_init", _init)

Op = abi.Opcode

#: Opcode -> how it is served.  Opcodes missing here (and not handled by the router) get ENOSYS.
OPERATIONS: dict[int, Operation] = {
    Op.LOOKUP: Operation("virtiofsd_fuse_lookup", _lookup),
    Op.FORGET: Operation("virtiofsd_fuse_forget", _forget),
    Op.BATCH_FORGET: Operation("virtiofsd_fuse_batch_forget", _batch_forget),
    Op.GETATTR: Operation("virtiofsd_fuse_getattr", _getattr),
    Op.SETATTR: Operation("virtiofsd_fuse_setattr", _setattr),
    Op.READLINK: Operation("virtiofsd_fuse_readlink", _nodeid_only),
    Op.SYMLINK: Operation("virtiofsd_fuse_symlink", _symlink),
    Op.MKNOD: Operation("virtiofsd_fuse_mknod", _mknod),
    Op.MKDIR: Operation("virtiofsd_fuse_mkdir", _mkdir),
    Op.UNLINK: Operation("virtiofsd_fuse_unlink", _unlink),
    Op.RMDIR: Operation("virtiofsd_fuse_rmdir", _unlink),
    Op.RENAME: Operation("virtiofsd_fuse_rename", _rename),
    Op.RENAME2: Operation("virtiofsd_fuse_rename", _rename2),
    Op.LINK: Operation("virtiofsd_fuse_link", _link),
    Op.OPEN: Operation("virtiofsd_fuse_open", _open),
    Op.READ: Operation("virtiofsd_fuse_read", _read),
    Op.WRITE: Operation("virtiofsd_fuse_write", _write, scatter=True),
    Op.STATFS: Operation("virtiofsd_fuse_statfs", _nodeid_only),
    Op.RELEASE: Operation("virtiofsd_fuse_release", _release),
    Op.FSYNC: Operation("virtiofsd_fuse_fsync", _fsync),
    Op.SETXATTR: Operation("virtiofsd_fuse_setxattr", _setxattr),
    Op.GETXATTR: Operation("virtiofsd_fuse_getxattr", _getxattr),
    Op.LISTXATTR: Operation("virtiofsd_fuse_listxattr", _listxattr),
    Op.REMOVEXATTR: Operation("virtiofsd_fuse_removexattr", _removexattr),
    Op.FLUSH: Operation("virtiofsd_fuse_flush", _flush),
    Op.OPENDIR: Operation("virtiofsd_fuse_opendir", _opendir),
    Op.READDIR: Operation("virtiofsd_fuse_readdir", _readdir),
    Op.RELEASEDIR: Operation("virtiofsd_fuse_releasedir", _releasedir),
    Op.FSYNCDIR: Operation("virtiofsd_fuse_fsyncdir", _fsync),
    Op.ACCESS: Operation("virtiofsd_fuse_access", _access),
    Op.CREATE: Operation("virtiofsd_fuse_create", _create),
    Op.FALLOCATE: Operation("virtiofsd_fuse_fallocate", _fallocate),
    Op.READDIRPLUS: Operation("virtiofsd_fuse_readdirplus", _readdir),
    Op.LSEEK: Operation("virtiofsd_fuse_lseek", _lseek),
    Op.COPY_FILE_RANGE: Operation("virtiofsd_fuse_copy_file_range", _copy_file_range),
    Op.SYNCFS: Operation("virtiofsd_fuse_syncfs", _syncfs),
    Op.GETLK: Operation("virtiofsd_fuse_getlk", _lk),
    Op.SETLK: Operation("virtiofsd_fuse_setlk", _setlk),
    Op.SETLKW: Operation("virtiofsd_fuse_setlk", _setlkw),
    Op.TMPFILE: Operation("virtiofsd_fuse_tmpfile", _create),
}


# --- Replies ------------------------------------------------------------------------------------


class ReplySink:
    """The writable guest memory after the reply header, for READ to fill in place."""

    __slots__ = ("_writable", "offered")

    def __init__(self, writable: Views) -> None:
        self._writable = writable
        #: The most bytes :meth:`buffers` has handed out; a READ may not claim more.
        self.offered = 0

    def buffers(self, n: int) -> list[memoryview]:
        """Views of up to ``n`` bytes of guest memory following the 16-byte reply header.

        Fewer bytes come back when the guest gave less room; ``sum(map(len, ...))`` tells.
        """
        if n < 0:
            raise ValueError(f"negative size {n}")
        views, reached = _window(self._writable, OUT_HEADER_SIZE, OUT_HEADER_SIZE + n)
        self.offered = max(self.offered, reached - OUT_HEADER_SIZE)
        return views


def _capacity(writable: Views) -> int:
    total = 0
    for view in writable:
        total += len(view)
    return total


def write_header(writable: Views, unique: int, error: int, length: int) -> int:
    """Write ``fuse_out_header`` (``error`` is a negative errno or 0); 0 when it cannot fit."""
    if writable and len(writable[0]) >= OUT_HEADER_SIZE:
        abi.OUT_HEADER.pack_into(writable[0], 0, length, error, unique)
        return OUT_HEADER_SIZE
    if _capacity(writable) < OUT_HEADER_SIZE:
        return 0
    _scatter(writable, abi.OUT_HEADER.pack(length, error, unique))
    return OUT_HEADER_SIZE


def write_error(writable: Views, unique: int, errno_value: int) -> int:
    """A header-only reply carrying ``-errno_value``; returns bytes written (0 if no room)."""
    return write_header(writable, unique, -errno_value, OUT_HEADER_SIZE)


def write_reply(writable: Views, unique: int, body: Buffer) -> int:
    """A successful reply: header + ``body``.  Returns the bytes written.

    When the guest's writable buffers cannot hold the whole reply nothing of the body is
    written and the guest receives ERANGE instead (the errno FUSE uses for "your buffer is too
    small"); the caller sees a return value different from ``16 + len(body)``.
    """
    body_size = len(body)
    total = OUT_HEADER_SIZE + body_size
    if writable:
        first = writable[0]
        first_size = len(first)
        if first_size >= total:
            abi.OUT_HEADER.pack_into(first, 0, total, 0, unique)
            first[OUT_HEADER_SIZE:total] = body
            return total
        if first_size == OUT_HEADER_SIZE and len(writable) > 1 and len(writable[1]) >= body_size:
            abi.OUT_HEADER.pack_into(first, 0, total, 0, unique)
            writable[1][:body_size] = body
            return total
    if _capacity(writable) < total:
        return write_error(writable, unique, errno.ERANGE)
    _scatter(writable, abi.OUT_HEADER.pack(total, 0, unique) + bytes(body))
    return total


def _scatter(writable: Views, data: bytes) -> None:
    """Copy ``data`` across ``writable`` in order; the caller checked that it fits."""
    pos = 0
    remaining = len(data)
    for view in writable:
        if not remaining:
            return
        chunk = min(len(view), remaining)
        view[:chunk] = data[pos:pos + chunk]
        pos += chunk
        remaining -= chunk
