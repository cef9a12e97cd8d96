"""The host agent that answers the conformance suite's HOSTOP requests, without a guest:
a console log written by hand, replies read back from the share."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import struct
import time

import pytest

from . import host_agent


def wait_for_reply(share: pathlib.Path, request_id: str) -> dict:
    reply = share / host_agent.REPLY_FOLDER / f"{request_id}.json"
    deadline = time.monotonic() + 10
    while not reply.exists():
        assert time.monotonic() < deadline, f"no reply {reply}"
        time.sleep(0.02)
    return json.loads(reply.read_text())


@pytest.fixture
def agent(tmp_path: pathlib.Path):
    share = tmp_path / "share"
    share.mkdir()
    console = tmp_path / "console.log"
    console.write_text("GUEST-MOUNTED\n")
    running = host_agent.HostAgent(console, {"auto": share})
    running.start()
    yield share, console
    running.stop()


def send(console: pathlib.Path, request_id: str, label: str, request: dict) -> None:
    with console.open("a") as stream:
        stream.write(f"HOSTOP {request_id} {label} {json.dumps(request)}\r\n")


def test_write_read_and_errors(agent) -> None:
    share, console = agent
    send(console, "r1", "auto", {"op": "write", "path": "f", "data": b"abc".hex()})
    assert wait_for_reply(share, "r1") == {"ok": True}
    assert (share / "f").read_bytes() == b"abc"
    send(console, "r2", "auto", {"op": "read", "path": "f"})
    assert wait_for_reply(share, "r2")["data"] == b"abc".hex()
    send(console, "r3", "auto", {"op": "read", "path": "missing"})
    answer = wait_for_reply(share, "r3")
    assert not answer["ok"] and answer["errno"] == 2


def test_lock_seen_through_ofd_getlk(agent) -> None:
    share, console = agent
    (share / "locked").write_bytes(b"x" * 100)
    fd = os.open(share / "locked", os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 10, 20, 0))
        send(console, "l1", "auto", {"op": "ofd_getlk", "path": "locked", "start": 0, "length": 0})
        answer = wait_for_reply(share, "l1")
    finally:
        os.close(fd)
    assert (answer["type"], answer["start"], answer["length"]) == (fcntl.F_WRLCK, 10, 20)


def test_unknown_label_is_not_answered(agent, tmp_path: pathlib.Path) -> None:
    share, console = agent
    send(console, "u1", "elsewhere", {"op": "read", "path": "f"})
    send(console, "u2", "auto", {"op": "stat", "path": "."})
    assert wait_for_reply(share, "u2")["ok"]
    assert not (share / host_agent.REPLY_FOLDER / "u1.json").exists()

