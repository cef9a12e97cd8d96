"""A guest that keeps sending garbage gets a bounded number of log lines."""

from __future__ import annotations

import logging

from virtiofsd.ratelimit import RateLimitedLog


def test_lines_beyond_the_burst_are_counted_not_logged(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("virtiofsd.ratelimit.time.monotonic", lambda: clock[0])
    limited = RateLimitedLog(logging.getLogger("guest"), burst=3, period=60.0,
                             level=logging.WARNING)
    with caplog.at_level(logging.WARNING, logger="guest"):
        for number in range(10):
            limited.error("bad request %d", number)
        assert [r.getMessage() for r in caplog.records] == [
            "bad request 0", "bad request 1", "bad request 2"]
        assert all(r.levelno == logging.WARNING for r in caplog.records)
        clock[0] += 61
        limited.error("bad request %d", 10)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "7 similar guest errors were not logged", "bad request 10"]
