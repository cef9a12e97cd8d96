"""The compiled worker's way of serving a request its ring copied, played over plain views:
the router's ``answer`` first, ``handle_chain`` when it declines, and the reply's pieces written
as ``vfs_ring_complete`` writes them (split_ring.c; tested on its own in test_native_ring.py).
Router tests and the FUSE fuzz target serve requests both ways through it."""

from __future__ import annotations

from virtiofsd.fuse.router import FuseRouter


def serve_by_answer(router: FuseRouter, queue: int, readable: list[memoryview],
                    writable: list[memoryview]) -> int:
    """What the compiled worker does with a request its ring copied: ``answer`` first,
    ``handle_chain`` when it declines, the reply's header and body written across the writable
    buffers as ``vfs_ring_complete`` writes them (nothing when they do not fit)."""
    request = memoryview(b"".join(bytes(view) for view in readable))
    room = sum(len(view) for view in writable)
    answered = router.answer(queue, request, room, lambda: writable)
    if answered is None:
        return router.handle_chain(queue, readable, writable)
    if not isinstance(answered, tuple):
        return answered.finish(writable)
    header, body, in_place = answered
    data = header + bytes(body)
    if len(data) + in_place > room:
        return 0
    position = 0
    for view in writable:
        piece = data[position:position + len(view)]
        view[:len(piece)] = piece
        position += len(piece)
    return len(data) + in_place
