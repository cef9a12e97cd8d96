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
  will never come.  It signals the call eventfd once per drained batch, and also right after
  a big request (:data:`BIG_REQUEST_BYTES`), so that the driver can refill the ring while the
  rest of a batch of big reads or writes is served (the signal then costs little next to
  the copy).
* The control plane never touches a running queue.  Stopping a ring (GET_VRING_BASE, new
  kick fd, reset, disconnect) sets a flag, writes the wake fd and joins the thread, which
  writes its next avail index back into the ring's ``base`` as it exits.  The kick fd is
  closed only after the join, so the worker never polls a closed (or reused) descriptor.
* A replaced memory table is picked up by each worker at its next wake-up: it compares the
  backend's current table with the one its queue uses and re-translates the ring addresses.

Thread pool (``--thread-pool-size N``, N > 0): the worker still pops every chain, but hands each
one to a pool shared by the connection's rings instead of serving it inline, so a request that
blocks (a slow fsync, a FIFO) does not hold up the ones behind it.  Completions then arrive out
of order from the pool's threads; they are serialised by the queue's completion lock, which
covers the used ring and the notification decision.  Stopping a ring waits until every chain it
handed out has completed, so the base reported to the front-end never leaves a request behind.

Deferred replies: a handler may return a :class:`~virtiofsd.deferred.Deferred` instead of a byte
count (a blocking lock wait).  The chain stays out until it resolves; with a pool it is completed
like any pool completion, without one the resolving thread queues it for the worker and wakes it,
so the used ring keeps a single writer.  Stopping a ring cancels what still waits, then waits for
it like for the pool.

Automatic pool (``--thread-pool-size auto``): the pool exists, but the worker serves a chain
itself unless handing it over pays: the handler says the request may block for long (an fsync,
a waiting lock; :meth:`ChainHandler.may_block`), or it moves a lot of data (at least
:data:`BIG_REQUEST_BYTES`) while more chains wait behind it, so that the copies of several big
reads or writes run in parallel (the GIL is released while ``preadv``/``pwritev`` run).  A
shallow queue of small requests never pays the hand-over, which costs several times the request
itself.  Completions always go through the completion lock in this mode.

Small requests without a chain: serving inline on the compiled queue, the worker hands a
request the walk copied to the handler's ``answer`` (see :class:`ChainHandler`), which returns
the reply as a header and a body (and, for a READ, how many bytes it already put in place),
and completes the chain with them in one compiled call; no
:class:`~virtiofsd.virtio.chain.DescriptorChain` is made, and views of the reply buffers only
for a READ.  What ``answer`` declines (WRITE, locks, INIT, ...) is dispatched as a chain.
Measured in docs/performance.md ("Requests answered without their chain").

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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from virtiofsd.config import THREAD_POOL_AUTO
from virtiofsd.deferred import Deferred
from virtiofsd.errors import FrontendProtocolError, GuestProtocolError
from virtiofsd.io.unix_socket import receive_message, send_message
from virtiofsd.ratelimit import RateLimitedLog
from virtiofsd.vhost_user.backend import DeviceStateHandler, VhostUserBackend, Vring
from virtiofsd.virtio.chain import DescriptorChain, InvalidChainError
from virtiofsd.virtio.device import ChainHandler
from virtiofsd.virtio.memory import GuestMemory
from virtiofsd.virtio.native_queue import WOKEN, NativeSplitQueue, WalkedChain
from virtiofsd.virtio.split_queue import SplitQueue, ring_layout_sizes

__all__ = ["AUTO_POOL", "BIG_REQUEST_BYTES", "QueueWorker", "auto_pool_size", "serve_connection"]

logger = logging.getLogger(__name__)

_POLL_FAILURE = select.POLLERR | select.POLLNVAL

#: ``thread_pool_size`` value of the automatic mode (see the module docstring).
AUTO_POOL = THREAD_POOL_AUTO
#: A chain moving at least this many bytes is worth a pool thread when others wait behind it.
BIG_REQUEST_BYTES = 64 * 1024


def auto_pool_size() -> int:
    """Threads of the automatic pool: one per CPU, at least 2, at most 8 (the copies it runs
    in parallel are memory-bound, and Python code holds the GIL anyway)."""
    return min(8, max(2, os.cpu_count() or 1))


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
        pool: Executor | None = None,
        *,
        auto: bool = False,
    ) -> None:
        """``auto``: ``pool`` is the automatic mode's, used only when it pays (module doc)."""
        self._vring = vring
        self._index = vring.index
        self._queue = queue
        self._memory = memory
        self._handler = handler
        # Resolved once: the handler is called for every chain.
        self._handle_chain = handler.handle_chain
        self._guest_errors = guest_errors
        self._pool = pool
        self._auto = auto and pool is not None
        self._may_block = getattr(handler, "may_block", None) or _never_blocks
        if isinstance(queue, NativeSplitQueue):
            queue.may_copy = getattr(handler, "may_copy", None)
        # Serialises completions (used ring + notification decision) when a pool serves them.
        self._completion_lock = threading.Lock()
        self._in_flight = 0
        self._all_completed = threading.Condition(self._completion_lock)
        #: Deferred replies not yet resolved (cancelled when the ring stops).
        self._deferred: set[Deferred] = set()
        #: Without a pool: resolved deferred chains, (head, written), for the worker to complete.
        self._resolved: deque[tuple[DescriptorChain, int]] = deque()
        self._stopping = False
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(
            target=self._run, name=f"virtqueue-{vring.index}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Make the worker look again (stop, ring enabled, new memory table, resolved reply)
        before it walks another chain."""
        if isinstance(self._queue, NativeSplitQueue):
            self._queue.interrupt()
        os.eventfd_write(self._wake_fd, 1)

    def stop(self) -> None:
        """Ask the thread to finish its current chain and exit, wait for it, free the wake fd."""
        self._stopping = True
        self.wake()
        self._thread.join()
        with self._all_completed:
            while self._in_flight:
                waiting = list(self._deferred)
                if waiting:
                    self._all_completed.release()
                    try:
                        for deferred in waiting:
                            deferred.cancel()
                    finally:
                        self._all_completed.acquire()
                self._all_completed.wait(0.1)
        self._complete_resolved()
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
        if isinstance(self._queue, NativeSplitQueue):
            self._serve_native()
        else:
            self._serve_python()

    def _serve_python(self) -> None:
        kick_fd = self._vring.kick_fd
        poller = select.poll()
        poller.register(kick_fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        poll = poller.poll
        process = self._process
        # Chains published before the ring started get no kick of their own.
        process()
        while not self._stopping:
            if not self._wait(poll):
                return
            if self._stopping:
                return
            process()

    def _wait(self, poll: Callable[[], list[tuple[int, int]]]) -> bool:
        """Sleep until the kick or the wake eventfd fires and reset them; False if poll reports
        an error (logged: the ring is no longer served)."""
        for fd, events in poll():
            if events & _POLL_FAILURE:
                logger.error("ring %d: poll reports an error on fd %d (events %#x); "
                             "the ring is no longer served", self._vring.index, fd, events)
                return False
            _consume_eventfd(fd)
        return True

    def _serve_native(self) -> None:
        """The compiled loop: :meth:`NativeSplitQueue.next_chain` waits, drains and, serving
        inline, signals the driver in C (following the ring's call eventfd through
        :meth:`Vring.follow_call_fd`); this loop only handles what needs Python (a chain to
        serve, a wake-up: stop, a new memory table, a disabled ring, deferred completions)."""
        queue = self._queue
        assert isinstance(queue, NativeSplitQueue)
        vring = self._vring
        kick_fd = vring.kick_fd
        wake_fd = self._wake_fd
        memory = self._memory
        dispatch = self._dispatch
        inline = self._pool is None
        next_walk = queue.next_walk
        chain_of = queue.chain_of
        request_of = queue.request_of
        # Served here, a small request the walk copied is answered without a chain (the
        # handler's optional ``answer``, see ChainHandler), unless migration logs dirty memory.
        answer = getattr(self._handler, "answer", None) if inline else None
        answer_small = self._answer_small
        poller = select.poll()
        poller.register(kick_fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        if inline:
            vring.follow_call_fd(queue.set_call_fd)
        # Whether the ring may be drained: re-decided only when next_chain returns WOKEN, since
        # everything that changes it (a new memory table, the ring enabled or disabled, a
        # resolved deferred reply, stop) wakes the worker (wake(), which also interrupts C).
        ready = self._prepare(memory())
        try:
            while not self._stopping:
                if not ready:
                    if not self._wait(poller.poll):
                        return
                    ready = self._prepare(memory())
                    continue
                try:
                    got = next_walk(kick_fd, wake_fd, inline)
                except InvalidChainError as err:
                    self._complete_invalid(err)
                    continue
                except GuestProtocolError as err:
                    self._guest_errors.error("ring %d: %s; waiting for the next kick",
                                             self._index, str(err))
                    ready = False
                    continue
                except OSError as err:
                    logger.error("ring %d: %s; the ring is no longer served", self._index,
                                 err.strerror)
                    return
                if type(got) is int:  # WOKEN
                    ready = self._prepare(memory())
                    continue
                if answer is not None and vring.dirty_log is None:
                    small = request_of(got)
                    if small is not None and answer_small(answer, got, small):
                        continue
                dispatch(chain_of(got))
        finally:
            if inline:
                vring.follow_call_fd(None)

    def _answer_small(self, answer: Callable[..., Any], walked: WalkedChain,
                      small: tuple[Any, ...]) -> bool:
        """Serve a copied small request through the handler's ``answer`` and complete it with
        the reply it returns (no chain is built); False when the handler wants the chain (the
        caller dispatches it)."""
        queue = self._queue
        assert isinstance(queue, NativeSplitQueue)
        try:
            answered = answer(self._index, *small)
        except Exception:
            logger.exception("ring %d: request handler failed on chain %d", self._index,
                             walked.counters[0])
            queue.complete(walked, b"", b"")
            return True
        if answered is None:
            return False
        if type(answered) is tuple:
            if queue.complete(walked, *answered) >= BIG_REQUEST_BYTES:
                self._notify()  # as _dispatch does after a big reply
            return True
        self._dispatch(queue.chain_of(walked), answered.finish)
        return True

    def _prepare(self, memory: GuestMemory | None) -> bool:
        """Before draining: follow a new memory table, complete resolved deferred chains.
        False when the ring cannot be drained now (no usable memory, ring disabled)."""
        queue = self._queue
        if memory is None:
            return False
        if memory is not queue.memory:
            try:
                queue.set_memory(memory)
            except GuestProtocolError as err:
                self._guest_errors.error("ring %d: %s", self._vring.index, str(err))
                return False
        if not self._vring.enabled:
            return False
        if self._resolved:
            self._complete_resolved()
            if queue.needs_notification():
                self._vring.signal_call()
        return True

    def _process(self) -> None:
        queue = self._queue
        if not self._prepare(self._memory()):
            return
        inline = self._pool is None
        while not self._stopping:
            queue.disable_notifications()
            healthy = self._drain()
            if inline:
                self._notify()
            if not healthy or self._stopping or not queue.enable_notifications():
                return

    def _drain(self) -> bool:
        """Complete every available chain; False if the ring itself is unusable."""
        pop = self._queue.pop
        dispatch = self._dispatch
        while not self._stopping:
            try:
                chain = pop()
            except InvalidChainError as err:
                self._complete_invalid(err)
                continue
            except GuestProtocolError as err:
                self._guest_errors.error("ring %d: %s; waiting for the next kick", self._index,
                                         str(err))
                return False
            if chain is None:
                return True
            dispatch(chain)
        return True

    def _complete_invalid(self, err: InvalidChainError) -> None:
        """A chain broke the rules: log it and give its head (if sane) back with 0 bytes."""
        self._guest_errors.error("ring %d: %s", self._index, str(err))
        if err.head is None:
            return
        if self._pool is None:
            self._queue.push_used(err.head, 0)
        else:
            self._complete_out_of_order(err.head, 0)
        if self._vring.dirty_log is not None:
            self._log_completion(None, 0)

    def _dispatch(self, chain: DescriptorChain,
                  finish: Callable[[list[memoryview]], int | Deferred] | None = None) -> None:
        """Serve one chain here or hand it to the pool, and complete it when served here.

        ``finish(writable)``: a request already answered whose reply still needs the chain's
        buffers (:meth:`_answer_small`; only without a pool): called instead of the handler."""
        if self._pool is not None and (not self._auto or self._worth_a_thread(chain)):
            with self._completion_lock:
                self._in_flight += 1
            self._pool.submit(self._serve_in_pool, chain)
            return
        written = self._serve_chain(chain, finish)
        if written is None:  # deferred: completed when it resolves
            return
        if self._pool is None:
            self._queue.push_used(chain.head, written)
            if written >= BIG_REQUEST_BYTES or chain.readable_bytes >= BIG_REQUEST_BYTES:
                # A big request took long: tell the driver now (if it asked), so it can
                # refill the ring while the rest of the batch is served.
                self._notify()
        else:  # the automatic pool's inline requests race with its threads' completions
            self._complete_out_of_order(chain.head, written)
        if self._vring.dirty_log is not None:
            self._log_completion(chain, written)

    def _notify(self) -> None:
        """Signal the call eventfd for what was pushed so far, if the driver wants to know."""
        if self._queue.needs_notification():
            self._vring.signal_call()

    def _worth_a_thread(self, chain: DescriptorChain) -> bool:
        """Automatic mode: hand ``chain`` to the pool (it may block, or it is big and others
        wait), or serve it here."""
        if self._may_block(chain.readable):
            return True
        if chain.writable_bytes < BIG_REQUEST_BYTES and chain.readable_bytes < BIG_REQUEST_BYTES:
            return False
        return bool(self._queue.known_available() or self._in_flight)

    def _serve_chain(self, chain: DescriptorChain,
                     finish: Callable[[list[memoryview]], int | Deferred] | None = None
                     ) -> int | None:
        """Run the handler (or ``finish``, see :meth:`_dispatch`) on one chain; the bytes it
        wrote, 0 when it failed, None when its reply was deferred (the chain is completed when
        that resolves)."""
        index = self._index
        try:
            if finish is None:
                written = self._handle_chain(index, chain.readable, chain.writable)
            else:
                written = finish(chain.writable)
        except GuestProtocolError as err:
            self._guest_errors.error("ring %d: bad request in chain %d: %s",
                                     index, chain.head, err)
            return 0
        except Exception:
            logger.exception("ring %d: request handler failed on chain %d", index, chain.head)
            return 0
        if not isinstance(written, int) or not 0 <= written <= chain.writable_bytes:
            if isinstance(written, Deferred):
                self._defer(chain, written)
                return None
            logger.error("ring %d: handler claims %r bytes written into %d writable bytes; "
                         "completing the chain with 0", index, written, chain.writable_bytes)
            return 0
        return written

    def _serve_in_pool(self, chain: DescriptorChain) -> None:
        """A pool thread's job: serve the chain, complete it, and count it as done."""
        try:
            written = self._serve_chain(chain)
            if written is not None:
                self._complete_out_of_order(chain.head, written)
                if self._vring.dirty_log is not None:
                    self._log_completion(chain, written)
        finally:
            with self._completion_lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._all_completed.notify_all()

    def _defer(self, chain: DescriptorChain, deferred: Deferred) -> None:
        """Keep ``chain`` out until ``deferred`` resolves with the bytes written."""
        head = chain.head
        limit = chain.writable_bytes
        with self._completion_lock:
            self._in_flight += 1
            self._deferred.add(deferred)

        def resolved(written: object) -> None:
            if not isinstance(written, int) or not 0 <= written <= limit:
                logger.error("ring %d: deferred reply of chain %d resolved with %r; completing "
                             "it with 0", self._index, head, written)
                written = 0
            try:
                if self._pool is None:
                    self._resolved.append((chain, written))
                    self.wake()
                else:
                    self._complete_out_of_order(head, written)
                    if self._vring.dirty_log is not None:
                        self._log_completion(chain, written)
            finally:
                with self._completion_lock:
                    self._deferred.discard(deferred)
                    self._in_flight -= 1
                    if not self._in_flight:
                        self._all_completed.notify_all()

        deferred.add_callback(resolved)

    def _complete_resolved(self) -> None:
        """Without a pool: put the resolved deferred chains on the used ring (worker only)."""
        push_used = self._queue.push_used
        resolved = self._resolved
        while resolved:
            chain, written = resolved.popleft()
            push_used(chain.head, written)
            if self._vring.dirty_log is not None:
                self._log_completion(chain, written)

    def _log_completion(self, chain: DescriptorChain | None, written: int) -> None:
        """Live migration is on: mark what a completion wrote into guest memory (the chain's
        reply bytes and the used ring) in the dirty log."""
        dirty_log = self._vring.dirty_log
        if dirty_log is None:
            return
        queue = self._queue
        if chain is not None and written:
            dirty_log.mark_views(queue.memory, chain.writable, written)
        dirty_log.mark(queue.used_gpa, ring_layout_sizes(queue.size, queue.event_idx)[2])

    def _complete_out_of_order(self, head: int, written: int) -> None:
        """Put one chain on the used ring and notify the driver if it asked to be."""
        with self._completion_lock:
            self._queue.push_used(head, written)
            if self._queue.needs_notification():
                self._vring.signal_call()


def _never_blocks(readable: list[memoryview]) -> bool:
    return False


class _Workers:
    """The :class:`~virtiofsd.vhost_user.backend.RingRunner` of one connection."""

    def __init__(self, handler: ChainHandler, pool: Executor | None = None, *,
                 auto: bool = False) -> None:
        self._handler = handler
        self._pool = pool
        self._auto = auto
        self._workers: dict[int, QueueWorker] = {}
        self._guest_errors = RateLimitedLog(logger)

    def start_ring(
        self, vring: Vring, queue: SplitQueue, memory: Callable[[], GuestMemory | None]
    ) -> None:
        worker = QueueWorker(vring, queue, memory, self._handler, self._guest_errors, self._pool,
                             auto=self._auto)
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
    thread_pool_size: int = 0,
    device_state: DeviceStateHandler | None = None,
) -> bool:
    """Serve one connected front-end until it disconnects; the caller keeps ``sock``.

    ``thread_pool_size``: 0 serves every request on its ring's thread, N > 0 hands every request
    to a pool of N threads, :data:`AUTO_POOL` decides per request (module docstring).

    Returns True when the front-end closed the connection, False when we ended it because of
    a protocol error (already logged).  All workers are stopped and joined, every fd received
    on the connection is closed, and ``handler.reset()`` has been called when this returns.
    """
    auto = thread_pool_size == AUTO_POOL
    size = auto_pool_size() if auto else thread_pool_size
    pool = ThreadPoolExecutor(size, thread_name_prefix="fuse-pool") if size > 0 else None
    workers = _Workers(handler, pool, auto=auto)
    backend = VhostUserBackend(workers, tag=tag, num_request_queues=num_request_queues,
                               device_state=device_state)
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
                logger.error("vhost-user protocol error, closing the connection: %s", str(err))
                break
            except ConnectionError as err:
                logger.error("vhost-user connection lost: %s", str(err))
                break
    finally:
        backend.close()
        if pool is not None:
            pool.shutdown(wait=True)
        try:
            handler.reset()
        except Exception:
            logger.exception("request handler failed to reset after the connection ended")
    return clean
