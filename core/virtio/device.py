"""What a virtio-fs device needs from the layer above it, and its config space.

The virtqueue machinery (:mod:`virtiofsd.io.daemon` driving :class:`SplitQueue`) knows nothing
about FUSE.  It hands every descriptor chain to a :class:`ChainHandler` and completes the
chain with the byte count the handler returns.
"""

from __future__ import annotations

import struct
from typing import Protocol

__all__ = [
    "HIPRIO_QUEUE_INDEX",
    "VIRTIO_FS_CONFIG",
    "VIRTIO_FS_TAG_SIZE",
    "ChainHandler",
    "virtio_fs_config",
]

#: Queue 0 is the high-priority queue (FORGET, INTERRUPT); queues 1..n carry requests.
HIPRIO_QUEUE_INDEX = 0

VIRTIO_FS_TAG_SIZE = 36
#: struct virtio_fs_config: tag[36] (UTF-8, NUL-padded, not necessarily terminated),
#: le32 num_request_queues.
VIRTIO_FS_CONFIG = struct.Struct(f"<{VIRTIO_FS_TAG_SIZE}sI")


class ChainHandler(Protocol):
    """Processes the requests of a virtio-fs device; implemented by the FUSE layer."""

    def handle_chain(
        self, queue_index: int, readable: list[memoryview], writable: list[memoryview]
    ) -> int:
        """Handle one request and return how many bytes were written into ``writable``.

        ``readable`` holds the request (device-readable buffers, in order); ``writable`` the
        room for the reply.  The views are only valid until this call returns: copy what must
        outlive it.  Called from the queue's worker thread; different queues run concurrently.
        Raising ``GuestProtocolError`` means the request was malformed; any other exception is
        a bug.  Either way the chain is completed with 0 bytes and serving goes on.

        A request that must wait returns a :class:`virtiofsd.deferred.Deferred` instead, resolved
        later (from any thread) with the byte count; its views stay valid until then, and
        cancelling it must lead to its resolution soon (the ring stopping cancels it).
        """
        ...

    # Optional: ``may_block(readable) -> bool``, whether a request can keep a thread waiting for
    # long; the automatic thread pool serves those on a pool thread.  Without it, none does.
    # Optional: ``may_copy(request) -> bool``, whether a request (its readable bytes, complete)
    # may reach handle_chain as a copy rather than as views of guest memory; the compiled queue
    # copies small requests (see virtiofsd.virtio.native_queue).  Without it, any may be.
    # Optional: ``answer(queue_index, request, room, writable)``, serving such a copied request
    # without its chain: None to have handle_chain serve it instead; the reply as (header, body,
    # in_place) for the worker to write (at most ``room`` bytes; ``in_place`` of them already
    # written after header and body through the views ``writable()`` returns); or an object
    # whose ``finish(writable_views)`` replies as handle_chain would (see
    # virtiofsd.fuse.router.FuseRouter.answer).  Used by a worker serving inline on the
    # compiled queue; without it, every chain goes to handle_chain.

    def reset(self) -> None:
        """Forget all per-session state: the front-end reset the device or disconnected."""
        ...


def virtio_fs_config(tag: str, num_request_queues: int) -> bytes:
    """The device config space; the tag must fit in 36 bytes of UTF-8."""
    encoded = tag.encode("utf-8")
    if not encoded or len(encoded) > VIRTIO_FS_TAG_SIZE:
        raise ValueError(f"virtio-fs tag must be 1 to {VIRTIO_FS_TAG_SIZE} bytes of UTF-8: {tag!r}")
    return VIRTIO_FS_CONFIG.pack(encoded, num_request_queues)
