"""Running one front-end connection: the control plane and one worker thread per started ring.

Threads and who owns what:

* The calling thread runs the control plane: it reads vhost-user messages, lets the
  :class:`~virtiofsd.vhost_user.backend.VhostUserBackend` apply them and sends the replies.
* Each started ring has a :class:`QueueWorker` thread that owns its
  :class:`~virtiofsd.virtio.split_queue.SplitQueue` exclusively.  It sleeps in ``poll`` on two
  eventfds: the ring's kick fd (the guest published buffers) and a private wake fd (the control
  plane wants it to look again, or to stop).  On every wake-up it drains *every* available
  chain, with notifications from the driver suppressed while it does, then re-enables them
  and re-checks so that a buffer published in between is not left waiting for a kick that
  will never come.  It signals the call eventfd at most once per drained batch.
* The control plane never touches a running queue.  Stopping a ring (GET_VRING_BASE, new
  kick fd, reset, disconnect) sets a flag, writes the wake fd and joins the thread, which
  writes its next avail index back into the ring's ``base`` as it exits.  The kick fd is
  closed only after the join, so the worker never polls a closed (or reused) descriptor.
* A replaced memory table is picked up by each worker at its next wake-up: it compares the
  backend's current table with the one its queue uses and re-translates the ring addresses.

A handler exception is a bug in the layer above: it is logged with its traceback, the chain
is completed with 0 bytes and serving continues.  Guest mistakes (a malformed chain, a bad
request) are logged at a limited rate, so a misbehaving guest cannot flood the log.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from virtiofsd.errors import FrontendProtocolError, GuestProtocolError
from virtiofsd.io.unix_socket import receive_message, send_message
from virtiofsd.vhost_user.backend import VhostUserBackend, Vring
from virtiofsd.virtio.chain import InvalidChainError
from virtiofsd.virtio.device import ChainHandler
from virtiofsd.virtio.memory import GuestMemory
from virtiofsd.virtio.split_queue import SplitQueue

__all__ = ["QueueWorker", "RateLimitedLog", "serve_connection"]

logger = logging.getLogger(__name__)


class RateLimitedLog:
    """At most ``burst`` error lines per ``period`` seconds; the rest are counted and reported."""

    def __init__(self, log: logging.Logger, *, burst: int = 10, period: float = 60.0) -> None:
        self._log = log
        self._burst = burst
        self._period = period
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._emitted = 0
        self._suppressed = 0

    def error(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self._period:
                if self._suppressed:
                    self._log.error("%d similar guest errors were not logged", self._suppressed)
                self._window_start = now
                self._emitted = 0
                self._suppressed = 0
            if self._emitted >= self._burst:
                self._suppressed += 1
                return
            self._emitted += 1
        self._log.error(message, *args)


def _consume_eventfd(fd: int) -> None:
    """Reset an eventfd counter after poll reported it readable.

    QEMU's eventfds are non-blocking.  Another reader cannot exist, but a spurious wake-up
    would make the read fail with EAGAIN; that just means there is nothing to consume.
    """
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        return


class QueueWorker:
    """The thread consuming one started ring."""

    def __init__(
        self,
        vring: Vring,
        queue: SplitQueue,
        memory: Callable[[], GuestMemory | None],
        handler: ChainHandler,
        guest_errors: RateLimitedLog,
    ) -> None:
        self._vring = vring
        self._queue = queue
        self._memory = memory
        self._handler = handler
        self._guest_errors = guest_errors
        self._stopping = False
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(
            target=self._run, name=f"virtqueue-{vring.index}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def stop(self) -> None:
        """Ask the thread to finish its current chain and exit, wait for it, free the wake fd."""
        self._stopping = True
        self.wake()
        self._thread.join()
        os.close(self._wake_fd)
        self._wake_fd = -1

    # ---- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            logger.exception("worker of ring %d failed; the ring is no longer served",
                             self._vring.index)
        finally:
            self._vring.base = self._queue.last_avail

    def _serve(self) -> None:
        kick_fd = self._vring.kick_fd
        poller = select.poll()
        poller.register(kick_fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        # Chains published before the ring started get no kick of their own.
        self._process()
        while not self._stopping:
            for fd, events in poller.poll():
                if events & (select.POLLERR | select.POLLNVAL):
                    logger.error("ring %d: poll reports an error on fd %d (events %#x); "
                                 "the ring is no longer served", self._vring.index, fd, events)
                    return
                _consume_eventfd(fd)
            if self._stopping:
                return
            self._process()

    def _process(self) -> None:
        queue = self._queue
        memory = self._memory()
        if memory is None:
            return
        if memory is not queue.memory:
            try:
                queue.set_memory(memory)
            except GuestProtocolError as err:
                self._guest_errors.error("ring %d: %s", self._vring.index, err)
                return
        if not self._vring.enabled:
            return
        while not self._stopping:
            queue.disable_notifications()
            healthy = self._drain()
            if queue.needs_notification():
                self._vring.signal_call()
            if not healthy or self._stopping or not queue.enable_notifications():
                return

    def _drain(self) -> bool:
        """Complete every available chain; False if the ring itself is unusable."""
        queue = self._queue
        handler = self._handler
        index = self._vring.index
        while not self._stopping:
            try:
                chain = queue.pop()
            except InvalidChainError as err:
                self._guest_errors.error("ring %d: %s", index, err)
                if err.head is not None:
                    queue.push_used(err.head, 0)
                continue
            except GuestProtocolError as err:
                self._guest_errors.error("ring %d: %s; waiting for the next kick", index, err)
                return False
            if chain is None:
                return True
            try:
                written = handler.handle_chain(index, chain.readable, chain.writable)
            except GuestProtocolError as err:
                self._guest_errors.error("ring %d: bad request in chain %d: %s",
                                         index, chain.head, err)
                written = 0
            except Exception:
                logger.exception("ring %d: request handler failed on chain %d", index, chain.head)
                written = 0
            if not isinstance(written, int) or not 0 <= written <= chain.writable_bytes:
                logger.error("ring %d: handler claims %r bytes written into %d writable bytes; "
                             "completing the chain with 0", index, written, chain.writable_bytes)
                written = 0
            queue.push_used(chain.head, written)
        return True


class _Workers:
    """The :class:`~virtiofsd.vhost_user.backend.RingRunner` of one connection."""

    def __init__(self, handler: ChainHandler) -> None:
        self._handler = handler
        self._workers: dict[int, QueueWorker] = {}
        self._guest_errors = RateLimitedLog(logger)

    def start_ring(
        self, vring: Vring, queue: SplitQueue, memory: Callable[[], GuestMemory | None]
    ) -> None:
        worker = QueueWorker(vring, queue, memory, self._handler, self._guest_errors)
        self._workers[vring.index] = worker
        worker.start()

    def stop_ring(self, vring: Vring) -> None:
        worker = self._workers.pop(vring.index, None)
        if worker is not None:
            worker.stop()

    def wake_ring(self, vring: Vring) -> None:
        worker = self._workers.get(vring.index)
        if worker is not None:
            worker.wake()

    def reset_device(self) -> None:
        self._handler.reset()


def serve_connection(
    sock: socket.socket,
    handler: ChainHandler,
    *,
    tag: str | None = None,
    num_request_queues: int = 1,
) -> bool:
    """Serve one connected front-end until it disconnects; the caller keeps ``sock``.

    Returns True when the front-end closed the connection, False when we ended it because of
    a protocol error (already logged).  All workers are stopped and joined, every fd received
    on the connection is closed, and ``handler.reset()`` has been called when this returns.
    """
    workers = _Workers(handler)
    backend = VhostUserBackend(workers, tag=tag, num_request_queues=num_request_queues)
    clean = False
    try:
        while True:
            try:
                message = receive_message(sock)
                if message is None:
                    logger.info("front-end disconnected")
                    clean = True
                    break
                reply = backend.handle_message(*message)
                if reply is not None:
                    send_message(sock, reply)
            except FrontendProtocolError as err:
                logger.error("vhost-user protocol error, closing the connection: %s", err)
                break
            except ConnectionError as err:
                logger.error("vhost-user connection lost: %s", err)
                break
    finally:
        backend.close()
        try:
            handler.reset()
        except Exception:
            logger.exception("request handler failed to reset after the connection ended")
    return clean
