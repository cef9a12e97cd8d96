"""What the hostile-guest test modules share: error capture, host snapshots, a victim folder
beside the share.  Imported by ``test_daemon_robustness.py``, ``test_name_hygiene.py`` and
``test_cve_regressions.py`` (``outside`` and the autouse ``still_serving`` are fixtures: a module
imports them by name to use them)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import FuseReplyError

@pytest.fixture(autouse=True)
def still_serving(workdir) -> Iterator[None]:
    """After the test: the daemon is alive and serves the root; ours logged no traceback (the
    Rust daemon's log is not ours to judge)."""
    yield
    session = workdir.session
    assert session.process.poll() is None, session.log_text()[-3000:]
    assert workdir.client.getattr(ROOT_ID).attr.ino == os.stat(session.shared_dir).st_ino
    if workdir.kind == "ours":
        assert "Traceback" not in session.log_text(), session.log_text()[-3000:]


#: Room for any reply these tests expect.
REPLY = 256


def fuse_error(call, *args, **kwargs) -> int:
    """The errno of the error reply ``call`` must get."""
    with pytest.raises(FuseReplyError) as failure:
        call(*args, **kwargs)
    return failure.value.errno


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under ``roots`` with its inode, mode, size and mtime."""
    seen = {}
    for root in roots:
        for directory, folders, files in os.walk(root):
            for name in (*folders, *files, ""):
                path = os.path.join(directory, name)
                st = os.lstat(path)
                seen[path] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture
def outside(workdir) -> Iterator[Path]:
    """A folder beside the share, with a file a hostile guest would like to reach."""
    folder = workdir.session.shared_dir.parent / f"outside-{workdir.host.name}"
    folder.mkdir()
    (folder / "victim").write_bytes(b"must not change")
    os.chmod(folder / "victim", 0o600)
    yield folder
    assert (folder / "victim").read_bytes() == b"must not change"
    assert stat.S_IMODE(os.stat(folder / "victim").st_mode) == 0o600
