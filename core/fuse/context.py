"""The per-request context a FUSE operation hook receives as ``req``."""

from __future__ import annotations

from typing import Any


class Request:
    """Who asks, and in which session: the fields of ``fuse_in_header`` a handler may need.

    ``uid``, ``gid`` and ``pid`` are the guest caller's (as the guest kernel filled them in).
    ``session`` is the :class:`virtiofsd.fuse.session.FuseSession` negotiated by INIT; its
    ``flags`` tell which optional protocol features are on.  ``supplementary_groups`` holds the
    gids of a CREATE_SUPP_GROUP extension and ``security_context`` the (name, value) of a
    SECURITY_CTX extension, when the guest sent them.
    """

    __slots__ = ("unique", "opcode", "nodeid", "uid", "gid", "pid", "session",
                 "supplementary_groups", "security_context")

    def __init__(self, unique: int, opcode: int, nodeid: int, uid: int, gid: int, pid: int,
                 session: Any) -> None:
        self.unique = unique
        self.opcode = opcode
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.session = session
        self.supplementary_groups: tuple[int, ...] = ()
        self.security_context: tuple[bytes, bytes] | None = None

    def __repr__(self) -> str:
        return (f"Request(unique={self.unique}, opcode={self.opcode}, nodeid={self.nodeid}, "
                f"uid={self.uid}, gid={self.gid}, pid={self.pid})")
