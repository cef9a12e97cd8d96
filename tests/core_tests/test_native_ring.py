"""What the compiled queue does beyond the Python one's contract (which test_split_queue.py and
the differential fuzzer check for both): merged buffers, the wait loop in C, and a daemon that
serves the same way on either queue."""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import threading

import pytest
from virtiofsd.fuse.abi import ROOT_ID
from virtiofsd.testing import running_daemon
from virtiofsd.virtio.chain import VIRTQ_DESC_F_NEXT as NEXT
from virtiofsd.virtio.chain import VIRTQ_DESC_F_WRITE as WRITE
from virtiofsd.virtio.chain import InvalidChainError
from virtiofsd.virtio.memory import GuestMemory, MappedRegion
from virtiofsd.virtio.native_queue import COPY_CAPACITY, NATIVE_AVAILABLE, WOKEN, NativeSplitQueue


from ring_driver import AVAIL, BASE, DATA, DESC, USED, Driver

pytestmark = pytest.mark.skipif(not NATIVE_AVAILABLE,
                                reason="the compiled virtqueue module is not built")

def native_queue(driver: Driver, **options: object) -> NativeSplitQueue:
    return NativeSplitQueue(driver.size, DESC, AVAIL, USED, driver.mem, **options)


def test_contiguous_buffers_come_out_merged_per_direction():
    """A Linux guest sends big requests one descriptor per page; pages that follow each other
    in guest memory become one view (and never across the readable/writable boundary)."""
    driver = Driver()
    big = COPY_CAPACITY + 4096
    data = os.urandom(big)
    driver.buf[DATA - BASE:DATA - BASE + big] = data
    driver.desc(0, DATA, 4096, NEXT, 1)
    driver.desc(1, DATA + 4096, big - 4096, NEXT, 2)
    driver.desc(2, DATA + big, 8, WRITE | NEXT, 3)
    driver.desc(3, DATA + big + 8, 8, WRITE | NEXT, 4)
    driver.desc(4, DATA + big + 100, 4, WRITE)
    driver.publish(0)
    chain = native_queue(driver, event_idx=False).pop()
    assert [bytes(view) for view in chain.readable] == [data]
    assert [view.nbytes for view in chain.writable] == [16, 4]
    assert (chain.readable_bytes, chain.writable_bytes) == (big, 20)


def test_a_small_request_is_a_snapshot_and_a_big_one_a_view():
    """Up to COPY_CAPACITY bytes the request is copied once, so the guest rewriting its
    memory afterwards changes nothing the daemon decodes; a bigger one (WRITE data) stays in
    guest memory."""
    driver = Driver()
    driver.buf[DATA - BASE:DATA - BASE + 8] = b"original"
    driver.desc(0, DATA, 4, NEXT, 1)
    driver.desc(1, DATA + 100, 4, NEXT, 2)
    driver.desc(2, DATA + COPY_CAPACITY, 8, WRITE)
    driver.buf[DATA + 100 - BASE:DATA + 104 - BASE] = b"tail"
    driver.desc(3, DATA + 0x2000, COPY_CAPACITY + 1)
    driver.publish(0, 3)
    queue = native_queue(driver, event_idx=False)
    small, big = queue.pop(), queue.pop()
    driver.buf[DATA - BASE:DATA - BASE + 4] = b"XXXX"
    driver.buf[DATA + 0x2000 - BASE] = 0x55
    assert [bytes(view) for view in small.readable] == [b"origtail"]
    assert big.readable[0][0] == 0x55



def test_a_small_request_kept_after_its_chain_is_gone_survives_later_walks():
    """What a hook keeps of a small request (a name, an xattr value) stays what the guest sent
    after the chain is dropped and its walk state is reused for the next chain."""
    driver = Driver()
    driver.buf[DATA - BASE:DATA - BASE + 8] = b"first..."
    driver.buf[DATA + 64 - BASE:DATA + 72 - BASE] = b"second.."
    driver.desc(0, DATA, 8)
    driver.desc(1, DATA + 64, 8)
    driver.publish(0, 1)
    queue = native_queue(driver, event_idx=False)
    chain = queue.pop()
    kept = chain.readable[0][:5]
    del chain
    assert bytes(queue.pop().readable[0]) == b"second.."
    assert bytes(kept) == b"first"

def test_merged_buffers_stop_at_a_region_boundary():
    first, second = bytearray(0x1000), bytearray(0x1000)
    memory = GuestMemory([MappedRegion(BASE, 0x1000, 0x7F00_0000_0000, memoryview(first)),
                          MappedRegion(BASE + 0x1000, 0x1000, 0x7F10_0000_0000,
                                       memoryview(second))])
    driver = Driver()
    driver.mem = memory
    driver.buf = first
    desc, avail, used = BASE, BASE + 0x200, BASE + 0x400
    struct.pack_into("<QIHH", first, 0, BASE + 0xFF0, 16, WRITE | NEXT, 1)
    struct.pack_into("<QIHH", first, 16, BASE + 0x1000, 16, WRITE, 0)
    struct.pack_into("<HHH", first, 0x200, 0, 1, 0)
    queue = NativeSplitQueue(8, desc, avail, used, memory, event_idx=False)
    chain = queue.pop()
    assert [view.nbytes for view in chain.writable] == [16, 16]


def test_a_buffer_split_over_more_regions_than_a_chain_can_hold_is_refused():
    """Each piece of a buffer that crosses regions is a view: their number is bounded, and
    past it the chain is invalid (never a write past the buffer list)."""
    regions = [MappedRegion(BASE + 16 * index, 16, 0x7F00_0000_0000 + 16 * index,
                            memoryview(bytearray(16))) for index in range(1, 200)]
    ring = bytearray(0x100)
    memory = GuestMemory([MappedRegion(BASE - 0x100, 0x100, 0x7E00_0000_0000,
                                       memoryview(ring)), *regions])
    struct.pack_into("<QIHH", ring, 0, BASE + 16, 16 * 150, 0, 0)
    struct.pack_into("<HHH", ring, 0x40, 0, 1, 0)
    queue = NativeSplitQueue(1, BASE - 0x100, BASE - 0xC0, BASE - 0x80, memory, event_idx=False)
    with pytest.raises(InvalidChainError, match="more than 66 buffers") as caught:
        queue.pop()
    assert caught.value.head == 0


@pytest.fixture
def eventfds():
    """(kick, wake, call) eventfds, non-blocking, closed afterwards unless a test did."""
    fds = tuple(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(3))
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def publish_one(driver: Driver, head: int = 0) -> None:
    driver.desc(head, *driver.alloc(b"request"), NEXT, head + 1)
    driver.desc(head + 1, *driver.alloc(16), WRITE)
    driver.publish(head)


def test_next_chain_drains_then_signals_the_driver_then_sleeps_until_woken(eventfds):
    kick, wake, call = eventfds
    driver = Driver()
    publish_one(driver)
    queue = native_queue(driver, event_idx=False)
    queue.set_call_fd(call)
    chain = queue.next_chain(kick, wake, True)
    assert bytes(chain.readable[0]) == b"request"
    queue.push_used(chain.head, 16)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)  # nothing signalled while chains are served
    os.eventfd_write(wake, 1)
    assert queue.next_chain(kick, wake, True) == WOKEN
    assert os.eventfd_read(call) == 1, "the driver learned of the completion before the sleep"
    assert driver.used_flags() == 1, "kicks stay off while the worker is busy"
    with pytest.raises(BlockingIOError):
        os.eventfd_read(wake)


def test_a_replaced_call_fd_is_never_written_again(eventfds):
    """QEMU swaps the call eventfd when it masks interrupts; after set_call_fd returns, the old
    descriptor may be closed and its number reused without a stray signal reaching it."""
    kick, wake, old = eventfds
    new = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    driver = Driver()
    publish_one(driver)
    queue = native_queue(driver, event_idx=False)
    queue.set_call_fd(old)
    queue.push_used(queue.next_chain(kick, wake, True).head, 0)
    queue.set_call_fd(new)
    os.eventfd_write(wake, 1)
    assert queue.next_chain(kick, wake, True) == WOKEN
    assert os.eventfd_read(new) == 1
    with pytest.raises(BlockingIOError):
        os.eventfd_read(old)
    os.close(new)


def test_without_notify_next_chain_leaves_notifications_to_the_completions(eventfds):
    kick, wake, call = eventfds
    driver = Driver()
    publish_one(driver)
    queue = native_queue(driver, event_idx=False)
    queue.set_call_fd(call)
    queue.push_used(queue.next_chain(kick, wake, False).head, 0)
    os.eventfd_write(wake, 1)
    assert queue.next_chain(kick, wake, False) == WOKEN
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)
    assert queue.needs_notification()


def test_a_kick_wakes_next_chain_for_the_chain_it_announces(eventfds):
    """An empty ring: next_chain re-enables kicks (EVENT_IDX: avail_event = next entry) and
    sleeps until the driver publishes and kicks."""
    kick, wake, _call = eventfds
    driver = Driver()
    queue = native_queue(driver, event_idx=True)

    def publish_and_kick() -> None:
        publish_one(driver)
        os.eventfd_write(kick, 1)

    timer = threading.Timer(0.2, publish_and_kick)
    timer.start()
    try:
        assert queue.next_chain(kick, wake, True).head == 0
    finally:
        timer.join()
    assert driver.avail_event() == 0
    with pytest.raises(BlockingIOError):
        os.eventfd_read(kick)


def test_an_interrupt_comes_back_before_the_next_walk(eventfds):
    kick, wake, _call = eventfds
    driver = Driver()
    publish_one(driver)
    queue = native_queue(driver, event_idx=False)
    queue.interrupt()
    assert queue.next_chain(kick, wake, True) == WOKEN
    assert queue.next_chain(kick, wake, True).head == 0


def test_a_closed_kick_fd_ends_the_wait_with_an_error(eventfds):
    kick, wake, _call = eventfds
    driver = Driver()
    queue = native_queue(driver, event_idx=False)
    os.close(kick)
    with pytest.raises(OSError, match="poll reports an error"):
        queue.next_chain(kick, wake, True)


@pytest.mark.parametrize("pure_python", [False, True], ids=["compiled", "python"])
def test_the_daemon_serves_on_either_queue(tmp_path, pure_python):
    """Both queues serve the same requests; the log names the one in use."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "data").write_bytes(os.urandom(300_000))
    env = dict(os.environ, VIRTIOFSD_PURE_PYTHON="1" if pure_python else "0")
    command = [sys.executable, "-m", "virtiofsd", "--socket-path", "{socket_path}",
               "--shared-dir", "{shared_dir}", "--sandbox", "none", "--log-level", "debug"]
    with running_daemon(command, share, env=env) as session:
        client = session.client
        entry = client.lookup(ROOT_ID, "data")
        handle = client.open(entry.nodeid)
        assert client.read(entry.nodeid, handle.fh, 0, 300_000) == (share / "data").read_bytes()
        created, opened = client.create(ROOT_ID, "new")
        assert client.write(created.nodeid, opened.fh, 0, b"x" * 70_000) == 70_000
        assert sorted(client.listdir(ROOT_ID)) == [b".", b"..", b"data", b"new"]
        with pytest.raises(OSError) as missing:
            client.lookup(ROOT_ID, "absent")
        assert missing.value.errno == errno.ENOENT
        log = session.log_text()
    assert (share / "new").read_bytes() == b"x" * 70_000
    started = re.search(r"ring 1 started \(size \d+, base \d+, (\w+)\)", log)
    assert started is not None, log
    assert started.group(1) == ("SplitQueue" if pure_python else "NativeSplitQueue")


def test_a_request_the_handler_keeps_in_guest_memory_comes_as_views():
    """may_copy says no (the FUSE router does for WRITE, whose data must keep the guest's
    alignment for host O_DIRECT): the small request comes as views of guest memory."""
    driver = Driver()
    driver.buf[DATA - BASE:DATA - BASE + 8] = b"WRITEabc"
    driver.desc(0, DATA, 8)
    driver.publish(0, 0)
    queue = native_queue(driver, event_idx=False)
    seen = []
    queue.may_copy = lambda request: seen.append(bytes(request)) or False
    kept = queue.pop()
    queue.may_copy = None
    copied = queue.pop()
    driver.buf[DATA - BASE] = ord("w")
    assert seen == [b"WRITEabc"]
    assert bytes(kept.readable[0]) == b"wRITEabc", "a view sees the guest's change"
    assert bytes(copied.readable[0]) == b"WRITEabc", "a copy does not"


def test_complete_writes_the_reply_across_the_writable_buffers_and_uses_the_chain():
    """A request answered without its chain (the FUSE router's answer): header and body go out
    across however the guest split its writable buffers, and the used element says how much."""
    driver = Driver()
    driver.buf[DATA - BASE:DATA - BASE + 8] = b"request!"
    driver.desc(0, DATA, 8, NEXT, 1)
    driver.desc(1, DATA + 0x100, 10, WRITE | NEXT, 2)
    driver.desc(2, DATA + 0x200, 30, WRITE)
    driver.publish(0)
    queue = native_queue(driver, event_idx=False)
    walked = queue.next_walk(-1, -1, False)
    request, room, writable = queue.request_of(walked)
    assert (bytes(request), room) == (b"request!", 40)
    views = writable()
    assert [len(view) for view in views] == [10, 30]
    views[1][16:20] = b"data"
    assert queue.complete(walked, b"H" * 16, memoryview(b"body-bytes"), 4) == 30
    assert bytes(driver.buf[DATA + 0x100 - BASE:DATA + 0x10A - BASE]) == b"H" * 10
    assert (bytes(driver.buf[DATA + 0x200 - BASE:DATA + 0x214 - BASE])
            == b"H" * 6 + b"body-bytes" + b"data")
    assert (driver.used_idx(), driver.used_element(0)) == (1, (0, 30))


def test_a_reply_that_does_not_fit_completes_the_chain_with_nothing_written():
    driver = Driver()
    driver.desc(0, DATA, 8, NEXT, 1)
    driver.desc(1, DATA + 0x100, 16, WRITE)
    driver.publish(0)
    queue = native_queue(driver, event_idx=False)
    walked = queue.next_walk(-1, -1, False)
    assert queue.complete(walked, b"H" * 16, b"", 1) == 0, "16 + 1 bytes do not fit 12"
    assert bytes(driver.buf[DATA + 0x100 - BASE:DATA + 0x110 - BASE]) == bytes(16)
    assert driver.used_element(0) == (0, 0)
