"""The FUSE request router: one descriptor chain in, one reply out, a plugin hook in between.

:class:`FuseRouter` is the device handler the virtio-fs queue threads call.  For each chain it
reads the FUSE header, decodes the arguments (:mod:`virtiofsd.fuse.codec`), calls the hook of
the opcode and encodes what the hook returned into the chain's writable buffers.

Answering policy:

- ``FuseError``/``OSError`` from a hook -> ``-errno``; a hook no plugin answers (``None``) and
  an opcode nobody serves -> ENOSYS; a request whose lengths lie -> EINVAL (and the daemon keeps
  serving); any other exception is a bug: logged with its traceback, answered EIO.
- Before the first successful INIT every request is answered EIO, as the C daemon does (the
  Rust one lets them reach an empty inode table, which answers EBADF).
- FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY never get a reply, whatever happens
  (NOTIFY_REPLY answers a notification, and this daemon sends none).
- A hook may return a :class:`~virtiofsd.deferred.Deferred` (a blocking lock wait): the router
  then returns a deferred byte count, resolved once the hook's deferred resolves and the reply
  is written.  The guest's FUSE_INTERRUPT of such a request cancels it (the hook answers EINTR);
  an INTERRUPT that overtakes its request is remembered for a while.
- What a hook returns becomes the reply body: an object's ``.encode()``, ``bytes`` as they are,
  an ``int`` from WRITE as ``fuse_write_out``, an ``int`` from READ as the number of bytes the
  plugin placed in the :class:`~virtiofsd.fuse.codec.ReplySink` (READ may return ``bytes``
  too).  A body larger than the guest's buffers is answered ERANGE.
- INIT is negotiated here (:func:`virtiofsd.fuse.session.negotiate`); the init hook is told
  afterwards and may refuse by raising.  No init implementation at all means "accept": the
  hook is a notification for plugins that keep per-session state.  DESTROY is answered OK
  (header only, as the C daemon does) after the destroy hook ran.

:meth:`FuseRouter.answer` is the same service for a request handed over as one copy, without
its chain: the compiled worker writes the reply it returns (header and body) itself.

Concurrency: the hiprio queue (FORGETs) and the request queues call :meth:`handle_chain` from
their own threads.  Ordinary requests take no lock: they read the current session once and keep
it.  INIT, DESTROY and :meth:`reset` replace the session under a lock, so two of them never
interleave; the guest sends nothing else while its INIT is unanswered or after DESTROY.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from virtiofsd.deferred import Deferred
from virtiofsd.errors import FuseError, GuestProtocolError
from virtiofsd.fuse import abi, codec
from virtiofsd.fuse.context import Request
from virtiofsd.fuse.replies import WriteReply
from virtiofsd.fuse.session import FuseSession, negotiate
from virtiofsd.manager import resolve_hook
from virtiofsd.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

Op = abi.Opcode
_NO_REPLY = frozenset((Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY))
#: How many INTERRUPTs of requests not (yet) waiting are remembered.
_EARLY_INTERRUPTS = 64
_BYTES_LIKE = (bytes, bytearray, memoryview)
# Plain ints for the per-request comparisons: an enum member is a class attribute lookup.
_INIT = int(Op.INIT)
_DESTROY = int(Op.DESTROY)
_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_INTERRUPT = int(Op.INTERRUPT)
_WRITE_OPCODE_BYTES = _WRITE.to_bytes(4, "little")
_OUT_HEADER_SIZE = codec.OUT_HEADER_SIZE
_IN_HEADER_SIZE = codec.IN_HEADER_SIZE
_unpack_in_header = abi.IN_HEADER.unpack_from
_pack_out_header = abi.OUT_HEADER.pack
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
#: Requests that can keep a thread waiting for long: flushing to disk, a lock that waits, an
#: open that waits for a lease holder on the host to let go.
_MAY_BLOCK = frozenset(int(op) for op in (Op.FSYNC, Op.FSYNCDIR, Op.FLUSH, Op.SETLKW,
                                          Op.FALLOCATE, Op.COPY_FILE_RANGE, Op.SYNCFS,
                                          Op.OPEN, Op.CREATE))

#: What :meth:`FuseRouter.answer` leaves to :meth:`FuseRouter.handle_chain`: the session's own
#: requests, WRITE (its data stays in guest memory), and lock requests (a SETLKW waits; SETLK
#: goes with it so one lock path serves both).
_NEEDS_CHAIN = frozenset(int(op) for op in (Op.INIT, Op.DESTROY, Op.WRITE, Op.SETLK,
                                            Op.SETLKW))


def _error_header(unique: int, error: int) -> bytes:
    """The header of a reply carrying ``-error`` and nothing else."""
    return _pack_out_header(_OUT_HEADER_SIZE, -error, unique)


def _opcode_name(opcode: int) -> str:
    try:
        return Op(opcode).name
    except ValueError:
        return f"opcode {opcode}"


class FuseRouter:
    """Serves FUSE requests from descriptor chains with the hooks of ``pm``.

    :param pm: the plugin manager (its hooks are resolved once, here: register every plugin
        first; see :func:`virtiofsd.manager.resolve_hook`).
    :param config: the :class:`virtiofsd.config.Config`, for INIT negotiation.
    """

    def __init__(self, pm: Any, config: Any) -> None:
        self._config = config
        self._session = FuseSession()
        self._lifecycle = threading.Lock()
        self._init_hook = pm.hook.virtiofsd_fuse_init
        self._destroy_hook = pm.hook.virtiofsd_fuse_destroy
        #: Read once: the per-request debug line costs nothing when debugging is off.  The
        #: daemon sets its log level before it builds the router.
        self._debug = log.isEnabledFor(logging.DEBUG)
        #: What the guest gets wrong is logged through this, so it cannot flood the log.
        self._guest_errors = RateLimitedLog(log, level=logging.WARNING)
        #: opcode -> (operation, hook callable), built once.
        self._table = {opcode: (operation, resolve_hook(pm, operation.hook_name))
                       for opcode, operation in codec.OPERATIONS.items()}
        #: unique -> the hook's deferred reply, for INTERRUPT to cancel.
        self._waiting: dict[int, Deferred] = {}
        self._early_interrupts: deque[int] = deque(maxlen=_EARLY_INTERRUPTS)
        self._waiting_lock = threading.Lock()

    @property
    def session(self) -> FuseSession:
        """The session requests currently run in (uninitialized before INIT)."""
        return self._session

    def restore_session(self, session: FuseSession) -> None:
        """Continue a session a migration source negotiated: the guest sends no new INIT."""
        with self._lifecycle:
            self._session = session
        log.info("FUSE session continued from the migration source: flags %#x", session.flags)

    def reset(self) -> None:
        """Device reset or front-end disconnect: end the FUSE session as DESTROY would.

        A failing destroy hook is logged with its traceback; the session ends regardless, so
        the next guest starts with INIT.
        """
        with self._lifecycle:
            try:
                self._end_session(Request(0, Op.DESTROY, 0, 0, 0, 0, self._session))
            except Exception:
                log.exception("the destroy hook failed during a device reset")

    def may_block(self, readable: Sequence[memoryview]) -> bool:
        """Whether the request in ``readable`` can wait for long (the automatic thread pool
        serves those on a pool thread).  Only the opcode is read; the request is decoded, and
        checked, when it is served."""
        first = readable[0] if readable else b""
        return len(first) >= 8 and int.from_bytes(first[4:8], "little") in _MAY_BLOCK

    def may_copy(self, request: memoryview) -> bool:
        """Whether the request may be handed over as a copy (see
        :mod:`virtiofsd.virtio.native_queue`): not a WRITE, whose data must stay where the guest
        put it.  Host O_DIRECT (``--allow-direct-io``) needs the guest's buffer alignment, which
        a copy after the 80 bytes of headers loses, and copying data only to write it is a
        waste."""
        return request[4:8] != _WRITE_OPCODE_BYTES

    def handle_chain(self, queue_index: int, readable: Sequence[memoryview],
                     writable: Sequence[memoryview]) -> int | Deferred:
        """Serve the request in ``readable``, reply into ``writable``.

        :returns: the number of bytes written into ``writable`` (0 when no reply is due or none
            can be written), or a deferred one for a request that waits.
        """
        if readable and len(readable[0]) >= _IN_HEADER_SIZE:
            header = _unpack_in_header(readable[0])
        else:
            try:
                header = codec.read_header(readable)
            except GuestProtocolError as exc:
                self._guest_errors.error("queue %d: dropping a request without a FUSE header: "
                                         "%s", queue_index, str(exc))
                return 0
        opcode = header[1]
        unique = header[2]
        if self._debug:
            log.debug("queue %d: %s unique=%d nodeid=%d len=%d", queue_index,
                      _opcode_name(opcode), unique, header[3], header[0])
        if opcode in _NO_REPLY:
            self._serve_without_reply(queue_index, readable, header)
            return 0
        session = self._session
        if opcode == _INIT:
            return self._init(readable, writable, header)
        if not session.initialized:
            return codec.write_error(writable, unique, errno.EIO)
        if opcode == _DESTROY:
            return self._destroy(readable, writable, header)
        entry = self._table.get(opcode)
        if entry is None:
            return codec.write_error(writable, unique, errno.ENOSYS)
        operation, hook = entry
        try:
            req, kwargs = codec.decode_request(readable, header, operation, session)
            if opcode == _READ:
                sink = codec.ReplySink(writable)
                result = hook(req=req, sink=sink, **kwargs)
                return self._read_reply(writable, unique, result, sink)
            result = hook(req=req, **kwargs)
        except Exception as exc:  # noqa: BLE001  (mapped, and a bug logged, by _error_of)
            return codec.write_error(writable, unique, self._error_of(opcode, unique, exc))
        return self._reply(writable, unique, opcode, result)

    def answer(self, queue_index: int, request: memoryview, room: int,
               writable: Callable[[], list[memoryview]]
               ) -> tuple[bytes, Any, int] | PendingAnswer | None:
        """Serve a request handed over whole, without its chain: the worker writes the reply
        it returns (see :meth:`virtiofsd.virtio.native_queue.NativeSplitQueue.complete`).

        The compiled ring copies small requests; answering from the copy skips building the
        chain and writing the reply through views, which is most of what the router costs
        per request.  The answer is the one :meth:`handle_chain` gives: same decoding, same
        errors, same logging.

        :param request: the request's bytes, valid only during this call (copied before use).
        :param room: the bytes the chain's writable buffers hold.
        :param writable: returns those buffers as views, for a READ's data (only READ calls
            it).
        :returns: None (nothing done) when the request needs :meth:`handle_chain`: no header,
            INIT and DESTROY, WRITE (its data stays in guest memory), lock requests (which may
            wait), or debug logging on; else ``(header, body, in_place)``: the reply's header
            and body, and the bytes of it already written in place after them (a READ's data;
            all empty for a request without reply: FORGET, INTERRUPT, ...); or, when the hook's
            answer needs the chain after all (a deferred reply), a :class:`PendingAnswer`.
        """
        if len(request) < _IN_HEADER_SIZE or self._debug:
            return None
        header = _unpack_in_header(request)
        opcode = header[1]
        if opcode in _NEEDS_CHAIN:
            return None
        if opcode in _NO_REPLY:
            self._serve_without_reply(queue_index, (bytes(request),), header)
            return b"", b"", 0
        unique = header[2]
        session = self._session
        if not session.initialized:
            return _error_header(unique, errno.EIO), b"", 0
        entry = self._table.get(opcode)
        if entry is None:
            return _error_header(unique, errno.ENOSYS), b"", 0
        operation, hook = entry
        sink = None
        try:
            req, kwargs = codec.decode_request((bytes(request),), header, operation, session)
            if opcode == _READ:
                sink = codec.ReplySink(writable())
                result = hook(req=req, sink=sink, **kwargs)
            else:
                result = hook(req=req, **kwargs)
        except Exception as exc:  # noqa: BLE001  (mapped, and a bug logged, by _error_of)
            return _error_header(unique, self._error_of(opcode, unique, exc)), b"", 0
        if sink is not None and type(result) is int:
            if not self._read_within(unique, result, sink):
                return _error_header(unique, errno.EIO), b"", 0
            return _pack_out_header(_OUT_HEADER_SIZE + result, 0, unique), b"", result
        body = self._body(unique, opcode, result)
        if body is None:
            return PendingAnswer(self, unique, opcode, result)
        if type(body) is int:
            return _error_header(unique, body), b"", 0
        total = _OUT_HEADER_SIZE + len(body)
        if total > room:
            self._reply_too_big(opcode, unique, len(body), room)
            return _error_header(unique, errno.ERANGE), b"", 0
        return _pack_out_header(total, 0, unique), body, 0

    def _error_of(self, opcode: int, unique: int, exc: Exception) -> int:
        """The errno a request that raised ``exc`` is answered with: EINVAL for a malformed
        request, the error's own errno, or EIO (with the traceback logged) for a bug."""
        if isinstance(exc, GuestProtocolError):
            self._guest_errors.error("malformed %s (unique %d): %s", _opcode_name(opcode),
                                     unique, str(exc))
            return errno.EINVAL
        if isinstance(exc, (FuseError, OSError)):
            if exc.errno in _OUT_OF_DESCRIPTORS:
                self._guest_errors.error("%s (unique %d): %s: the daemon is out of file "
                                         "descriptors; raise --rlimit-nofile (and the hard "
                                         "limit, ulimit -Hn)", _opcode_name(opcode), unique,
                                         str(exc))
            return exc.errno or errno.EIO
        log.error("%s (unique %d) failed", _opcode_name(opcode), unique, exc_info=exc)
        return errno.EIO

    def _reply(self, writable: Sequence[memoryview], unique: int, opcode: int,
               result: Any) -> int | Deferred:
        body = self._body(unique, opcode, result)
        if body is None:
            return self._defer(writable, unique, opcode, result)
        if type(body) is int:
            return codec.write_error(writable, unique, body)
        written = codec.write_reply(writable, unique, body)
        if written != _OUT_HEADER_SIZE + len(body):
            self._reply_too_big(opcode, unique, len(body), sum(len(view) for view in writable))
        return written

    def _body(self, unique: int, opcode: int, result: Any) -> Any:
        """The reply body a hook's result stands for: bytes-like; an errno (``int``) when it
        stands for an error; None for a :class:`Deferred` (the reply comes later)."""
        # Reply objects first: most requests answer with one (no reply type is bytes-like).
        encode = getattr(result, "encode", None)
        if encode is not None:
            return encode()
        if isinstance(result, _BYTES_LIKE):
            return result
        if result is None:
            return errno.ENOSYS
        if isinstance(result, int) and opcode == _WRITE:
            return WriteReply(result).encode()
        if isinstance(result, Deferred):
            return None
        log.error("%s (unique %d): a hook returned %r, which is not a reply",
                  _opcode_name(opcode), unique, result)
        return errno.EIO

    def _reply_too_big(self, opcode: int, unique: int, body_size: int, room: int) -> None:
        self._guest_errors.error("%s (unique %d): reply of %d bytes does not fit %d writable "
                                 "bytes", _opcode_name(opcode), unique, body_size, room)

    def _defer(self, writable: Sequence[memoryview], unique: int, opcode: int,
               pending: Deferred) -> Deferred:
        """Answer later: a deferred byte count, resolved when ``pending`` is and its reply is
        written.

        Cancelling the returned byte count is the ring stopping (a live migration's
        switch-over); cancelling ``pending`` is the guest's FUSE_INTERRUPT.  Both end the wait
        with EINTR, but a stopping ring's EINTR is answered ENOLCK: the Linux FUSE client turns
        EINTR from a lock request into a syscall restart, which without a pending signal
        reaches the program as errno 512 (ERESTARTSYS); ENOLCK reaches it as itself (the lock
        was not granted)."""
        ring_stopped = threading.Event()

        def stop_waiting() -> None:
            ring_stopped.set()
            pending.cancel()

        written = Deferred(cancel=stop_waiting)

        def answer(result: Any) -> None:
            with self._waiting_lock:
                self._waiting.pop(unique, None)
            if isinstance(result, (FuseError, OSError)):
                code = result.errno or errno.EIO
                if code == errno.EINTR and ring_stopped.is_set():
                    code = errno.ENOLCK
                written.resolve(codec.write_error(writable, unique, code))
            elif isinstance(result, BaseException):
                log.error("%s (unique %d) failed while waiting: %r", _opcode_name(opcode),
                          unique, result)
                written.resolve(codec.write_error(writable, unique, errno.EIO))
            else:
                written.resolve(self._reply(writable, unique, opcode, result))

        with self._waiting_lock:
            self._waiting[unique] = pending
            interrupted = unique in self._early_interrupts
        pending.add_callback(answer)
        if interrupted:
            pending.cancel()
        return written

    def _interrupt(self, readable: Sequence[memoryview]) -> None:
        """FUSE_INTERRUPT: cancel the waiting request it names, or remember it for a while."""
        (target,) = abi.INTERRUPT_IN.unpack(b"".join(codec.gather(
            readable, _IN_HEADER_SIZE, _IN_HEADER_SIZE + abi.INTERRUPT_IN.size)))
        with self._waiting_lock:
            pending = self._waiting.get(target)
            if pending is None:
                self._early_interrupts.append(target)
                return
        pending.cancel()

    def _read_reply(self, writable: Sequence[memoryview], unique: int, result: Any,
                    sink: codec.ReplySink) -> int | Deferred:
        if type(result) is not int:
            return self._reply(writable, unique, _READ, result)
        if not self._read_within(unique, result, sink):
            return codec.write_error(writable, unique, errno.EIO)
        total = _OUT_HEADER_SIZE + result
        if not codec.write_header(writable, unique, 0, total):
            return 0
        return total

    def _read_within(self, unique: int, result: int, sink: codec.ReplySink) -> bool:
        """Whether a READ hook's byte count is one the buffers it was given can hold (a
        larger one is a plugin bug, logged; the guest gets EIO)."""
        if 0 <= result <= sink.offered:
            return True
        log.error("READ (unique %d): the hook returned %r with %d bytes of buffers given",
                  unique, result, sink.offered)
        return False

    def _serve_without_reply(self, queue_index: int, readable: Sequence[memoryview],
                             header: tuple[int, ...]) -> None:
        """FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY: act, never answer (nothing waits)."""
        opcode = header[1]
        session = self._session
        if not session.initialized:
            return
        entry = self._table.get(opcode)
        try:
            if opcode == _INTERRUPT:
                self._interrupt(readable)
                return
            if entry is None:
                return
            operation, hook = entry
            req, kwargs = codec.decode_request(readable, header, operation, session)
            hook(req=req, **kwargs)
        except (GuestProtocolError, FuseError, OSError) as exc:
            self._guest_errors.error("queue %d: %s (unique %d) dropped: %s", queue_index,
                                     _opcode_name(opcode), header[2], str(exc))
        except Exception:
            log.exception("queue %d: %s (unique %d) failed", queue_index, _opcode_name(opcode),
                          header[2])

    def _init(self, readable: Sequence[memoryview], writable: Sequence[memoryview],
              header: tuple[int, ...]) -> int:
        """Negotiate and tell the plugins; a well-formed INIT first ends any running session."""
        unique = header[2]
        with self._lifecycle:
            try:
                req, fields = codec.decode_request(readable, header, codec.INIT, self._session)
                if self._session.initialized:
                    log.info("the guest sent INIT again: resetting the FUSE session")
                    self._end_session(req)
                session, body = negotiate(config=self._config, **fields)
                if session.initialized:
                    req.session = session
                    self._init_hook(req=req, session=session)
                    self._session = session
                    log.info("FUSE session started: guest %d.%d, we %d.%d, flags %#x",
                             fields["major"], fields["minor"], session.major,
                             abi.KERNEL_MINOR_VERSION, session.flags)
            except GuestProtocolError as exc:
                self._guest_errors.error("malformed INIT (unique %d): %s", unique, str(exc))
                return codec.write_error(writable, unique, errno.EINVAL)
            except (FuseError, OSError) as exc:
                log.warning("INIT refused (unique %d): %s", unique, str(exc))
                return codec.write_error(writable, unique, exc.errno or errno.EIO)
            except Exception:
                log.exception("INIT (unique %d) failed", unique)
                return codec.write_error(writable, unique, errno.EIO)
        return codec.write_reply(writable, unique, body)

    def _destroy(self, readable: Sequence[memoryview], writable: Sequence[memoryview],
                 header: tuple[int, ...]) -> int:
        """The guest unmounted: end the session and answer OK (header only, as C does)."""
        unique = header[2]
        with self._lifecycle:
            session = self._session
            req = Request(unique, Op.DESTROY, header[3], header[4], header[5], header[6],
                          session)
            try:
                self._end_session(req)
            except (FuseError, OSError) as exc:
                return codec.write_error(writable, unique, exc.errno or errno.EIO)
            except Exception:
                log.exception("DESTROY (unique %d) failed", unique)
                return codec.write_error(writable, unique, errno.EIO)
        return codec.write_reply(writable, unique, b"")

    def _end_session(self, req: Request) -> None:
        """Forget the session, then let the plugins drop their state (caller holds the lock).

        The session is uninitialized before the hook runs, so a failing hook still leaves the
        router waiting for a fresh INIT.
        """
        was_initialized = self._session.initialized
        self._session = FuseSession()
        if was_initialized:
            self._destroy_hook(req=req)


class PendingAnswer:
    """A hook's answer that :meth:`FuseRouter.answer` cannot turn into bytes alone: the
    reply comes later (a :class:`Deferred`) and needs the chain's writable buffers."""

    __slots__ = ("_router", "_unique", "_opcode", "_result")

    def __init__(self, router: FuseRouter, unique: int, opcode: int, result: Any) -> None:
        self._router = router
        self._unique = unique
        self._opcode = opcode
        self._result = result

    def finish(self, writable: Sequence[memoryview]) -> int | Deferred:
        """Reply into ``writable`` as :meth:`FuseRouter.handle_chain` would have."""
        return self._router._reply(writable, self._unique, self._opcode, self._result)

