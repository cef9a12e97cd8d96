"""The vhost-user socket: listening, accepting one front-end, and moving framed messages.

Facts this module relies on:

* A vhost-user message is sent with a single ``sendmsg`` carrying the header, the payload and
  the SCM_RIGHTS fds.  On a stream socket the fds are attached to the first byte of that
  write, so they arrive with the ``recvmsg`` that reads the header.  We still collect fds from
  every read of a message, in case a front-end splits its writes.
* If our control buffer is too small the kernel closes the surplus fds and sets MSG_CTRUNC.
  The message is then unusable (we do not know which fds are missing), so that is a protocol
  error that ends the connection.
* Received fds get O_CLOEXEC atomically through MSG_CMSG_CLOEXEC, so a concurrent fork/exec
  can never inherit guest memory or eventfds.
* ``recvmsg`` returning no data means the front-end closed the connection (EOF).
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import stat

from virtiofsd.errors import FrontendProtocolError
from virtiofsd.vhost_user import messages as msg

__all__ = [
    "accept_one",
    "adopt_listener",
    "listen_at",
    "receive_message",
    "send_message",
]

logger = logging.getLogger(__name__)

_FD_ITEMSIZE = array.array("i").itemsize
_ANCILLARY_SPACE = socket.CMSG_SPACE(msg.MAX_FDS_PER_MESSAGE * _FD_ITEMSIZE)


def listen_at(path: str) -> socket.socket:
    """Create the listening socket at ``path``, replacing a stale socket left there.

    Anything at ``path`` that is not a socket is left alone and reported: we never delete a
    user's file because of a mistyped option.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket; not replacing it", path)
        os.unlink(path)
        logger.debug("removed stale socket %s", path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(path)
        listener.listen(1)
    except BaseException:
        listener.close()
        raise
    return listener


def adopt_listener(fd: int) -> socket.socket:
    """Wrap an inherited listening socket (``--fd``), checking that it is one."""
    try:
        listener = socket.socket(fileno=fd)
    except OSError as err:
        raise OSError(err.errno, f"--fd {fd} is not a usable socket: {err.strerror}") from err
    try:
        if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM:
            raise OSError(errno.ENOTSOCK, f"--fd {fd} is not a Unix stream socket")
        if not listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise OSError(errno.EINVAL, f"--fd {fd} is not a listening socket")
        listener.set_inheritable(False)
    except BaseException:
        listener.detach()
        raise
    return listener


def accept_one(listener: socket.socket, description: str) -> socket.socket:
    """Wait for the front-end and return its connection; exactly one is ever served."""
    logger.info("waiting for connection on %s", description)
    connection, _ = listener.accept()
    logger.info("client connected")
    return connection


def receive_message(sock: socket.socket) -> tuple[msg.Header, bytes, list[int]] | None:
    """Read one complete message: (header, payload, fds), or ``None`` at EOF.

    The caller owns the returned fds.  Raises :class:`FrontendProtocolError` for a truncated
    or malformed message (any fds received are closed first).
    """
    fds: list[int] = []
    try:
        head = _receive_exact(sock, msg.HEADER.size, fds, allow_eof=True)
        if head is None:
            return None
        try:
            header = msg.decode_header(head)
        except msg.MalformedMessage as err:
            raise FrontendProtocolError(str(err)) from err
        payload = _receive_exact(sock, header.size, fds, allow_eof=False) if header.size else b""
        assert payload is not None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, payload, fds


def _receive_exact(
    sock: socket.socket, size: int, fds: list[int], *, allow_eof: bool
) -> bytes | None:
    chunks: list[bytes] = []
    missing = size
    while missing:
        data, ancillary, flags, _ = sock.recvmsg(missing, _ANCILLARY_SPACE, socket.MSG_CMSG_CLOEXEC)
        _collect_fds(ancillary, fds)
        if flags & socket.MSG_CTRUNC:
            raise FrontendProtocolError(
                f"more than {msg.MAX_FDS_PER_MESSAGE} file descriptors in one message "
                "(control data truncated)"
            )
        if not data:
            if allow_eof and missing == size and not fds:
                return None
            raise FrontendProtocolError(
                f"connection closed in the middle of a message ({size - missing} of {size} bytes)"
            )
        chunks.append(data)
        missing -= len(data)
    return b"".join(chunks)


def _collect_fds(ancillary: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _FD_ITEMSIZE])
            fds.extend(received)


def send_message(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one complete message, with ``fds`` (still owned by the caller) attached."""
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([data], ancillary)
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)
