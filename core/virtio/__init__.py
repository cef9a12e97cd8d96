"""The virtqueue layer: guest memory, split rings and descriptor chains, over plain buffers.

Nothing here opens a file descriptor or a socket; the memory may be an ``mmap`` of the
front-end's memfds or a ``bytearray`` in a test.  The handler interface the daemon calls for
each chain is :class:`~virtiofsd.virtio.device.ChainHandler`.
"""

from __future__ import annotations

from virtiofsd.virtio.chain import DescriptorChain, InvalidChainError
from virtiofsd.virtio.device import ChainHandler
from virtiofsd.virtio.memory import GuestMemory, GuestMemoryError, MappedRegion
from virtiofsd.virtio.split_queue import SplitQueue

__all__ = [
    "ChainHandler",
    "DescriptorChain",
    "GuestMemory",
    "GuestMemoryError",
    "InvalidChainError",
    "MappedRegion",
    "SplitQueue",
]
