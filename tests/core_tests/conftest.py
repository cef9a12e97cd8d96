"""The daemons under test, as fixtures: ours and (when installed) the Rust reference.

Tests that state what a user sees take ``daemon_kind`` and run once per daemon, so the same
assertions hold against both.  Starting a daemon costs 50-250 ms, so modules share one daemon
per kind (:class:`SharedDaemon`, module scope) and give every test its own folder in the
share (``workdir``); a daemon that died is restarted for the next test, so one crash fails one
test, not the rest of the module.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import DaemonSession, FuseClient, running_daemon

RUST_REFERENCE = Path(
    os.environ.get("VIRTIOFSD_RUST_REFERENCE", "/var/tmp/virtiofsd-reference/rust-virtiofsd")
)
DAEMON_KINDS = ("ours", "rust")


def daemon_command(kind: str, *extra: str) -> list[str]:
    """The command line of daemon ``kind`` on the placeholders ``running_daemon`` fills in.

    Both run without a sandbox, because some tests look at the daemon's descriptors through
    /proc/PID/fd by the share's real path; the seccomp filter (default kill) is on.  The
    sandboxes have their own tests (test_sandbox.py), and the guest workload runs with every
    default.  VIRTIOFSD_DAEMON_WRAPPER is put in front of our command (scripts/measure-syscalls.py
    runs it under strace).
    """
    if kind == "ours":
        program = [*shlex.split(os.environ.get("VIRTIOFSD_DAEMON_WRAPPER", "")),
                   sys.executable, "-m", "virtiofsd"]
    elif kind == "rust":
        program = [str(RUST_REFERENCE)]
    else:
        raise ValueError(f"unknown daemon kind {kind!r}")
    return [
        *program,
        "--socket-path",
        "{socket_path}",
        "--shared-dir",
        "{shared_dir}",
        "--sandbox",
        "none",
        *extra,
    ]


def skip_unless_available(kind: str) -> None:
    if kind == "rust" and not os.access(RUST_REFERENCE, os.X_OK):
        pytest.skip(
            f"reference daemon {RUST_REFERENCE} not installed "
            "(bash /work/shared/tools/reference-daemons.sh installs it)"
        )


@contextlib.contextmanager
def started(
    kind: str, share: str | os.PathLike[str], *extra: str, **options: object
) -> Iterator[DaemonSession]:
    """Run daemon ``kind`` on ``share`` with ``extra`` options (``options`` go to
    :func:`running_daemon`); skips the test when that daemon is not installed."""
    skip_unless_available(kind)
    with running_daemon(daemon_command(kind, *extra), share, **options) as session:
        yield session


@pytest.fixture
def command_of():
    """:func:`daemon_command`, for tests that run a daemon themselves (``--fd``, two daemons)."""
    return daemon_command


class SharedDaemon:
    """One daemon kept for many tests, restarted when a test killed it."""

    def __init__(self, kind: str, share: Path) -> None:
        self.kind = kind
        self.share = share
        self._stack: contextlib.ExitStack | None = None
        self._session: DaemonSession | None = None

    def session(self) -> DaemonSession:
        current = self._session
        if current is None or current.process.poll() is not None:
            self.close()
            self._stack = contextlib.ExitStack()
            self._session = self._stack.enter_context(started(self.kind, self.share))
        assert self._session is not None
        return self._session

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._session = self._stack, None, None
            stack.close()


class Workdir(NamedTuple):
    """A test's own folder in a shared daemon's share: host path and FUSE node id."""

    client: FuseClient
    host: Path
    nodeid: int
    session: DaemonSession
    kind: str


@pytest.fixture(scope="module", params=DAEMON_KINDS)
def daemon_kind(request: pytest.FixtureRequest) -> str:
    skip_unless_available(request.param)
    return request.param


@pytest.fixture(scope="module")
def shared_daemon(
    daemon_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedDaemon]:
    share = tmp_path_factory.mktemp(f"share-{daemon_kind}")
    daemon = SharedDaemon(daemon_kind, share)
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def workdir(shared_daemon: SharedDaemon, request: pytest.FixtureRequest) -> Workdir:
    """A fresh folder named after the test, created on the host and looked up by the client."""
    session = shared_daemon.session()
    assert session.client is not None
    host = shared_daemon.share / request.node.name.replace("/", "_")
    host.mkdir()
    entry = session.client.lookup(ROOT_ID, host.name)
    return Workdir(session.client, host, entry.nodeid, session, shared_daemon.kind)


@pytest.fixture
def start_daemon(daemon_kind: str):
    """``start_daemon(share, *options, **running_daemon_options)``: a daemon of this test's kind
    of its own, as a context manager yielding the :class:`DaemonSession`."""

    def start(share: str | os.PathLike[str], *extra: str, **options: object):
        return started(daemon_kind, share, *extra, **options)

    return start
