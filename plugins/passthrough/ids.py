"""Which host ids a guest request acts as, and which ids the guest is shown.

``--translate-uid`` / ``--translate-gid`` (parsed by :mod:`virtiofsd.idmap`) apply at exactly
these places, as in the Rust daemon: the credentials a creation runs with, the owner a chown
sets, and the owner in every attribute the guest receives.  ACCESS compares the guest caller
with the guest's view of the owner, so it agrees with what the guest kernel itself checks.  Without
translation rules every method here hands its input back unchanged, at the cost of one test.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

from virtiofsd.errors import FuseError
from virtiofsd.idmap import ForbiddenIdError, IdTranslation, parse_translation
from virtiofsd.sys.credentials import thread_credentials

#: The context of a creation by host root: nothing to switch (stateless, so shared).
_UNCHANGED_CREDENTIALS = contextlib.nullcontext()


class GuestStat:
    """A stat result with the owner replaced by the guest's view of it; every other field is
    the host's.

    The fields an attribute reply reads (:class:`virtiofsd.fuse.replies.StatLike`) are copied
    in: read through ``__getattr__`` one by one, they cost twice as much as the rest of a
    GETATTR.  Any other field is read from the host's result when asked for.
    """

    __slots__ = ("_host", "st_uid", "st_gid", "st_ino", "st_size", "st_blocks", "st_atime_ns",
                 "st_mtime_ns", "st_ctime_ns", "st_mode", "st_nlink", "st_rdev", "st_blksize")

    def __init__(self, host: Any, uid: int, gid: int) -> None:
        self._host = host
        self.st_uid = uid
        self.st_gid = gid
        self.st_ino = host.st_ino
        self.st_size = host.st_size
        self.st_blocks = host.st_blocks
        self.st_atime_ns = host.st_atime_ns
        self.st_mtime_ns = host.st_mtime_ns
        self.st_ctime_ns = host.st_ctime_ns
        self.st_mode = host.st_mode
        self.st_nlink = host.st_nlink
        self.st_rdev = host.st_rdev
        self.st_blksize = host.st_blksize

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class IdMapper:
    """The uid and gid translations of one daemon, applied to requests and attributes."""

    def __init__(self, uids: IdTranslation, gids: IdTranslation) -> None:
        self._uids = uids
        self._gids = gids
        self._maps_guest_ids = uids.maps_guest_ids or gids.maps_guest_ids
        self._maps_host_ids = uids.maps_host_ids or gids.maps_host_ids

    @classmethod
    def from_config(cls, config: Any) -> IdMapper:
        return cls(parse_translation(config.translate_uid, "uid"),
                   parse_translation(config.translate_gid, "gid"))

    def owner_to_host(self, uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
        """The host owner a guest chown (or creation) names; ``None`` stays "unchanged".

        :raises FuseError: EPERM when a ``forbid-guest`` rule covers either id.
        """
        if not self._maps_guest_ids:
            return uid, gid
        try:
            return (None if uid is None else self._uids.to_host(uid),
                    None if gid is None else self._gids.to_host(gid))
        except ForbiddenIdError as error:
            raise FuseError(errno.EPERM, str(error)) from None

    def caller(self, req: Any) -> tuple[int, int, tuple[int, ...]]:
        """The caller's host uid, gid and supplementary groups, for a request that creates.

        A forbidden supplementary group is dropped rather than refused: it names no owner, it
        would only have widened the caller's access.

        :raises FuseError: EPERM when the caller's uid or gid is forbidden.
        """
        uid, gid = self.owner_to_host(req.uid, req.gid)
        groups = req.supplementary_groups
        if self._maps_guest_ids and groups:
            groups = tuple(self._allowed_host_groups(groups))
        return uid, gid, groups

    def acting_as_caller(self, req: Any) -> contextlib.AbstractContextManager[None]:
        """A context that runs its block with the calling thread switched to the caller's host
        credentials.  For a caller who is host root (uid and gid 0, no groups) it changes
        nothing and costs nothing: :func:`thread_credentials` never switches to 0, the daemon's
        own ids.

        :raises FuseError: EPERM when the caller's uid or gid is forbidden.
        """
        uid, gid, groups = self.caller(req)
        if not (uid or gid or groups):
            return _UNCHANGED_CREDENTIALS
        return thread_credentials(uid, gid, groups)

    def guest_view(self, st: Any) -> Any:
        """``st`` as the guest may see it: owners translated host-to-guest (``st`` itself when
        no rule maps host ids)."""
        if not self._maps_host_ids:
            return st
        return GuestStat(st, self._uids.to_guest(st.st_uid), self._gids.to_guest(st.st_gid))

    def _allowed_host_groups(self, groups: tuple[int, ...]) -> Iterator[int]:
        for group in groups:
            try:
                yield self._gids.to_host(group)
            except ForbiddenIdError:
                continue
