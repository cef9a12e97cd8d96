"""What the hostile-guest test modules share: error capture, host snapshots, a victim folder
beside the share.  Imported by ``test_daemon_robustness.py``, ``test_name_hygiene.py`` and
``test_cve_regressions.py`` (``outside`` is a fixture: import it by name to use it)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from virtiofsd.testing import FuseReplyError

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
