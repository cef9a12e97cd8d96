"""Drive a virtio-fs daemon the way QEMU and a Linux guest would, without either.

``virtiofsd.testing`` is a pure-Python vhost-user *front-end*: it connects to a daemon's
socket, negotiates like QEMU 7.2, hands over memfd-backed guest memory, runs the driver side
of the hiprio and request virtqueues, and speaks FUSE over them.  The test suite uses it to
check any daemon (ours or the reference ones), robustness tests use its raw layers to send
what no well-behaved guest would, and the benchmark builds on its request path.

Layers, bottom up:

- :mod:`~virtiofsd.testing.guest_memory` -- memfd regions and a bump allocator;
- :mod:`~virtiofsd.testing.driver_ring` -- the driver half of a split virtqueue;
- :mod:`~virtiofsd.testing.frontend` -- the vhost-user control connection;
- :mod:`~virtiofsd.testing.fuse_client` -- FUSE requests and parsed replies;
- :mod:`~virtiofsd.testing.daemon` -- start a daemon, connect, always tear down.

Typical fixture::

    @pytest.fixture
    def fuse(tmp_path):
        with running_daemon(["virtiofsd", "--socket-path", "{socket_path}",
                             "--shared-dir", "{shared_dir}"], tmp_path) as session:
            yield session.client
"""

from virtiofsd.testing.daemon import DaemonSession, DaemonStartError, connect, running_daemon
from virtiofsd.testing.driver_ring import DriverQueue
from virtiofsd.testing.frontend import (
    HIPRIO_QUEUE,
    REQUEST_QUEUE,
    BackendProtocolError,
    VhostUserFrontend,
)
from virtiofsd.testing.fuse_client import FuseClient, FuseReplyError, RawDescriptor
from virtiofsd.testing.guest_memory import GuestMemory

__all__ = [
    "BackendProtocolError",
    "DaemonSession",
    "DaemonStartError",
    "DriverQueue",
    "FuseClient",
    "FuseReplyError",
    "GuestMemory",
    "HIPRIO_QUEUE",
    "REQUEST_QUEUE",
    "RawDescriptor",
    "VhostUserFrontend",
    "connect",
    "running_daemon",
]
