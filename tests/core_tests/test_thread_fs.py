"""A umask for one thread only: the guest's umask must never leak into other requests."""

from __future__ import annotations

import os
import threading

from virtiofsd.sys.thread_fs import thread_umask


def test_thread_umask_is_private_to_its_thread_and_restored(tmp_path):
    previous = os.umask(0)
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def create_with_guest_umask() -> None:
        with thread_umask(0o077):
            os.mkdir(tmp_path / "masked", 0o777)
            inside.set()
            release.wait(10)
        os.mkdir(tmp_path / "after", 0o777)
        seen["after"] = os.stat(tmp_path / "after").st_mode & 0o777

    worker = threading.Thread(target=create_with_guest_umask)
    try:
        worker.start()
        assert inside.wait(10)
        os.mkdir(tmp_path / "other-thread", 0o777)
        release.set()
        worker.join(10)
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "masked").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "other-thread").st_mode & 0o777 == 0o777
    assert seen["after"] == 0o777
