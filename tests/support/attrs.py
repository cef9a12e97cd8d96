"""Comparing what a daemon reports with what the host's stat says."""

from __future__ import annotations

import os
from typing import Any


def assert_attr_matches(attr: Any, st: os.stat_result) -> None:
    """The ``fuse_attr`` a daemon sent describes the same inode, in the same state, as ``st``."""
    assert attr.ino == st.st_ino
    assert attr.mode == st.st_mode
    assert attr.size == st.st_size
    assert attr.nlink == st.st_nlink
    assert (attr.uid, attr.gid) == (st.st_uid, st.st_gid)
    assert attr.mtime * 10**9 + attr.mtimensec == st.st_mtime_ns
    assert attr.ctime * 10**9 + attr.ctimensec == st.st_ctime_ns
