"""The device side of the split ring, driven by a tiny driver writing into a bytearray."""

from __future__ import annotations

import struct

import pytest
from virtiofsd.errors import GuestProtocolError
from virtiofsd.virtio.chain import (
    VIRTQ_DESC_F_INDIRECT as INDIRECT,
)
from virtiofsd.virtio.chain import (
    VIRTQ_DESC_F_NEXT as NEXT,
)
from virtiofsd.virtio.chain import (
    VIRTQ_DESC_F_WRITE as WRITE,
)
from virtiofsd.virtio.chain import (
    InvalidChainError,
)
from virtiofsd.virtio.memory import GuestMemory, MappedRegion
from virtiofsd.virtio.native_queue import NATIVE_AVAILABLE, NativeSplitQueue

from ring_driver import AVAIL, BASE, DATA, DESC, MEM_SIZE, USED, Driver

@pytest.fixture(autouse=True, params=["python", "native"])
def queue_implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs against the Python queue and the compiled one."""
    if request.param == "native":
        if not NATIVE_AVAILABLE:
            pytest.skip("the compiled virtqueue module is not built")
        monkeypatch.setattr(Driver, "queue_class", NativeSplitQueue)
    return request.param


def test_empty_ring_pops_nothing():
    assert Driver().queue().pop() is None


def test_simple_chain_is_split_into_readable_and_writable_buffers_and_completed():
    driver = Driver()
    header = driver.alloc(b"request-header")
    body = driver.alloc(b"body")
    reply = driver.alloc(32)
    driver.desc(3, *header, NEXT, 5)
    driver.desc(5, *body, NEXT, 1)
    driver.desc(1, *reply, WRITE)
    driver.publish(3)
    queue = driver.queue()

    chain = queue.pop()
    assert chain is not None and chain.head == 3
    assert b"".join(chain.readable) == b"request-headerbody"
    assert chain.writable_bytes == 32
    chain.writable[0][:5] = b"reply"
    assert queue.pop() is None

    queue.push_used(chain.head, 5)
    assert driver.used_idx() == 1
    assert driver.used_element(0) == (3, 5)
    assert driver.buf[reply[0] - BASE : reply[0] - BASE + 5] == b"reply"


def test_several_published_chains_come_out_in_order():
    driver = Driver()
    for head in range(4):
        driver.desc(head, *driver.alloc(bytes([head]) * 4))
    driver.publish(2, 0, 3)
    queue = driver.queue()
    assert [queue.pop().head for _ in range(3)] == [2, 0, 3]
    assert queue.pop() is None
    driver.publish(1)
    assert queue.pop().head == 1


def test_zero_length_buffers_are_skipped():
    driver = Driver()
    driver.desc(0, 0xDEAD_0000, 0, NEXT, 1)
    driver.desc(1, *driver.alloc(b"x"))
    driver.publish(0)
    chain = driver.queue().pop()
    assert [bytes(v) for v in chain.readable] == [b"x"]


def test_indirect_table_is_followed():
    driver = Driver()
    table, _ = driver.alloc(16 * 3)
    driver.desc(0, *driver.alloc(b"in-a"), NEXT, 2, table=table)
    driver.desc(2, *driver.alloc(b"in-b"), NEXT, 1, table=table)
    driver.desc(1, *driver.alloc(8), WRITE, table=table)
    driver.desc(4, *driver.alloc(b"direct"), NEXT, 6)
    driver.desc(6, table, 16 * 3, INDIRECT)
    driver.publish(4)
    chain = driver.queue().pop()
    assert chain.head == 4
    assert b"".join(chain.readable) == b"directin-ain-b"
    assert chain.writable_bytes == 8


@pytest.mark.parametrize(
    "length, flags, indirect_feature, nested, match",
    [
        (32, INDIRECT, False, False, "not negotiated"),
        (24, INDIRECT, True, False, "multiple of 16"),
        (0, INDIRECT, True, False, "multiple of 16"),
        (16 * 9, INDIRECT, True, False, "exceeds the queue size"),
        (32, INDIRECT | NEXT, True, False, "NEXT"),
        (32, INDIRECT, True, True, "another indirect"),
    ],
)
def test_bad_indirect_descriptors_are_rejected(length, flags, indirect_feature, nested, match):
    driver = Driver()
    table, _ = driver.alloc(16 * 9)
    driver.desc(0, *driver.alloc(b"a"), NEXT, 1, table=table)
    driver.desc(1, table, 32, INDIRECT if nested else 0, table=table)
    driver.desc(0, table, length, flags, 1)
    driver.desc(1, *driver.alloc(b"b"))
    driver.publish(0)
    with pytest.raises(InvalidChainError, match=match) as caught:
        driver.queue(indirect=indirect_feature).pop()
    assert caught.value.head == 0


def test_indirect_table_outside_memory_is_rejected():
    driver = Driver()
    driver.desc(0, BASE + MEM_SIZE - 16, 32, INDIRECT)
    driver.publish(0)
    with pytest.raises(InvalidChainError, match="indirect table"):
        driver.queue().pop()


def test_loop_in_the_descriptor_table_is_detected():
    driver = Driver()
    buf = driver.alloc(b"loop")
    driver.desc(0, *buf, NEXT, 1)
    driver.desc(1, *buf, NEXT, 0)
    driver.publish(0)
    with pytest.raises(InvalidChainError, match="more than 8 descriptors") as caught:
        driver.queue().pop()
    assert caught.value.head == 0


def test_loop_in_an_indirect_table_is_detected():
    driver = Driver()
    table, _ = driver.alloc(32)
    buf = driver.alloc(b"x")
    driver.desc(0, *buf, NEXT, 1, table=table)
    driver.desc(1, *buf, NEXT, 0, table=table)
    driver.desc(0, table, 32, INDIRECT)
    driver.publish(0)
    with pytest.raises(InvalidChainError, match="indirect table has more than 2"):
        driver.queue().pop()


def test_a_chain_using_every_descriptor_once_is_fine():
    driver = Driver(size=4)
    for index in range(4):
        driver.desc(index, *driver.alloc(b"d"), NEXT if index < 3 else 0, index + 1)
    driver.publish(0)
    assert b"".join(driver.queue().pop().readable) == b"dddd"


def test_next_index_outside_the_table_is_rejected():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"), NEXT, 8)
    driver.publish(0)
    with pytest.raises(InvalidChainError, match="outside a table"):
        driver.queue().pop()


@pytest.mark.parametrize("addr, length", [(BASE + MEM_SIZE - 4, 8), (0x10, 4), ((1 << 64) - 4, 8)])
def test_buffers_outside_guest_memory_are_rejected(addr, length):
    driver = Driver()
    driver.desc(2, addr, length, WRITE)
    driver.publish(2)
    queue = driver.queue()
    with pytest.raises(InvalidChainError, match="not backed") as caught:
        queue.pop()
    assert caught.value.head == 2
    # The entry was consumed: the caller completes it and the ring goes on.
    queue.push_used(caught.value.head, 0)
    assert driver.used_element(0) == (2, 0)
    assert queue.pop() is None


def test_readable_after_writable_is_rejected():
    driver = Driver()
    driver.desc(0, *driver.alloc(8), WRITE | NEXT, 1)
    driver.desc(1, *driver.alloc(b"late"))
    driver.publish(0)
    with pytest.raises(InvalidChainError, match="follows a device-writable"):
        driver.queue().pop()


def test_head_outside_the_queue_is_rejected_without_a_head():
    driver = Driver()
    driver.publish(8)
    driver.desc(0, *driver.alloc(b"ok"))
    driver.publish(0)
    queue = driver.queue()
    with pytest.raises(InvalidChainError) as caught:
        queue.pop()
    assert caught.value.head is None
    assert queue.pop().head == 0


def test_avail_index_running_too_far_ahead_is_a_ring_error():
    driver = Driver()
    driver.set_avail_idx(9)
    with pytest.raises(GuestProtocolError, match="more than the queue size"):
        driver.queue().pop()


def test_indices_wrap_around_16_bits():
    driver = Driver(size=4)
    driver.set_avail_idx(0xFFFE)
    struct.pack_into("<H", driver.buf, USED - BASE + 2, 0xFFFF)
    for head in range(4):
        driver.desc(head, *driver.alloc(bytes([head])))
    driver.publish(0, 1, 2, 3)
    assert driver.avail_idx == 2
    queue = driver.queue(last_avail=0xFFFE)
    heads = []
    while (chain := queue.pop()) is not None:
        heads.append(chain.head)
        queue.push_used(chain.head, 0)
    assert heads == [0, 1, 2, 3]
    assert queue.last_avail == 2
    assert driver.used_idx() == 3
    # used idx 0xFFFF -> slot 3, then 0, 1, 2
    assert [driver.used_element(slot)[0] for slot in (3, 0, 1, 2)] == [0, 1, 2, 3]


def test_last_avail_base_can_be_set_and_read():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    driver.publish(0, 0, 0)
    queue = driver.queue()
    queue.last_avail = 2
    assert queue.pop().head == 0
    assert queue.last_avail == 3
    assert queue.pop() is None


def test_used_index_continues_from_guest_memory():
    driver = Driver()
    struct.pack_into("<H", driver.buf, USED - BASE + 2, 5)
    driver.desc(0, *driver.alloc(b"a"))
    driver.publish(0)
    queue = driver.queue()
    queue.push_used(queue.pop().head, 1)
    assert driver.used_idx() == 6
    assert driver.used_element(5) == (0, 1)


def test_without_event_idx_no_interrupt_flag_suppresses_notifications():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    queue = driver.queue()
    assert not queue.needs_notification()  # nothing used yet
    driver.publish(0)
    queue.push_used(queue.pop().head, 0)
    driver.set_avail_flags(1)
    assert not queue.needs_notification()
    driver.publish(0)
    queue.push_used(queue.pop().head, 0)
    driver.set_avail_flags(0)
    assert queue.needs_notification()
    assert not queue.needs_notification()


def test_event_idx_notifies_only_when_used_index_passes_used_event():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    queue = driver.queue(event_idx=True)

    def complete_one() -> None:
        driver.publish(0)
        queue.push_used(queue.pop().head, 0)

    complete_one()
    assert queue.needs_notification()  # first decision always notifies
    driver.set_used_event(3)
    complete_one()  # used idx 2
    assert not queue.needs_notification()
    complete_one()  # used idx 3: the driver wants a notification once entry 3 is used
    assert not queue.needs_notification()
    complete_one()  # used idx 4 passes used_event 3
    assert queue.needs_notification()
    complete_one()
    complete_one()  # 6, event still 3: already notified for it
    assert not queue.needs_notification()


def test_event_idx_batch_crossing_used_event_notifies_once():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    queue = driver.queue(event_idx=True)
    driver.publish(0)
    queue.push_used(queue.pop().head, 0)
    queue.needs_notification()
    driver.set_used_event(2)
    for _ in range(4):
        driver.publish(0)
        queue.push_used(queue.pop().head, 0)
    assert queue.needs_notification()
    assert not queue.needs_notification()


def test_notification_suppression_for_draining():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    plain = driver.queue()
    plain.disable_notifications()
    assert driver.used_flags() == 1
    assert not plain.enable_notifications()
    assert driver.used_flags() == 0
    driver.publish(0)
    assert plain.enable_notifications()  # a chain is waiting: drain again


def test_event_idx_enable_publishes_avail_event():
    driver = Driver()
    driver.desc(0, *driver.alloc(b"a"))
    queue = driver.queue(event_idx=True)
    driver.publish(0, 0)
    queue.disable_notifications()
    assert driver.used_flags() == 0
    queue.pop()
    assert queue.enable_notifications()
    assert driver.avail_event() == 1
    queue.pop()
    assert not queue.enable_notifications()
    assert driver.avail_event() == 2


def test_rings_outside_memory_or_misaligned_are_rejected():
    driver = Driver()
    with pytest.raises(GuestProtocolError, match="not in guest memory"):
        Driver.queue_class(8, DESC, AVAIL, BASE + MEM_SIZE - 8, driver.mem, event_idx=False)
    with pytest.raises(GuestProtocolError, match="aligned"):
        Driver.queue_class(8, DESC + 8, AVAIL, USED, driver.mem, event_idx=False)
    with pytest.raises(GuestProtocolError, match="power of two"):
        Driver.queue_class(6, DESC, AVAIL, USED, driver.mem, event_idx=False)


def test_buffer_spanning_two_regions_yields_two_views():
    low = bytearray(0x1000)
    driver = Driver()
    driver.mem = GuestMemory([*driver.mem.regions,
                              MappedRegion(BASE - 0x1000, 0x1000, 0x6000_0000, memoryview(low))])
    low[-2:] = b"ab"
    driver.desc(0, BASE - 2, 4)
    driver.publish(0)
    chain = driver.queue().pop()
    assert b"".join(chain.readable) == b"ab" + bytes(driver.buf[:2])


def test_buffers_alternating_between_regions_are_each_translated_in_their_own():
    """The walker slices consecutive buffers of one region without a lookup; a buffer in
    another region, one crossing into the next region, and one past the end of a region must
    still be translated (or refused) on their own."""
    low = bytearray(b"L" * 0x1000)
    driver = Driver()
    driver.mem = GuestMemory([*driver.mem.regions,
                              MappedRegion(BASE - 0x1000, 0x1000, 0x6000_0000, memoryview(low))])
    driver.buf[DATA - BASE:DATA - BASE + 8] = b"HIGHHIGH"
    buffers = [(DATA, 4), (BASE - 0x1000, 4), (DATA + 4, 4), (BASE - 0x1000 + 8, 4),
               (BASE - 2, 4)]
    for index, (addr, length) in enumerate(buffers):
        last = index == len(buffers) - 1
        driver.desc(index, addr, length, 0 if last else NEXT, index + 1)
    driver.publish(0)
    chain = driver.queue().pop()
    assert b"".join(chain.readable) == b"HIGHLLLLHIGHLLLLLL" + bytes(driver.buf[:2])
    assert chain.readable_bytes == 20

    driver.desc(5, DATA, 4, NEXT, 6)
    driver.desc(6, BASE + MEM_SIZE - 2, 4)  # runs past the end of guest memory
    driver.publish(5)
    with pytest.raises(InvalidChainError, match="not backed"):
        driver.queue(last_avail=1).pop()


def test_set_memory_retranslates_the_rings():
    driver = Driver()
    queue = driver.queue()
    replacement = bytearray(driver.buf)
    new_mem = GuestMemory([MappedRegion(BASE, MEM_SIZE, 0x1234_0000, memoryview(replacement))])
    queue.set_memory(new_mem)
    struct.pack_into("<H", replacement, AVAIL - BASE + 2, 1)
    struct.pack_into("<QIHH", replacement, 0, DATA, 1, 0, 0)
    assert queue.pop().head == 0


def test_a_concurrent_reader_never_sees_a_torn_used_index():
    """The guest reads ``used->idx`` from another CPU while we publish.  The index must move
    with single 2-byte stores: ``struct.pack_into`` zero-fills before it writes, which showed a
    reader an index of 0 (a ring that "went backwards", which Linux treats as broken).

    Each round runs the index from 1 up to 0xFFFF, so 0 is never a value we publish: a reader
    that sees 0 saw a torn store, however the scheduler interleaves the two processes."""
    import mmap
    import multiprocessing
    import time

    context = multiprocessing.get_context("fork")
    shared = mmap.mmap(-1, MEM_SIZE)  # anonymous and shared: the forked reader sees our stores
    mem = GuestMemory([MappedRegion(BASE, MEM_SIZE, 0x7F00_0000_0000, memoryview(shared))])
    used_index = memoryview(shared)[USED - BASE: USED - BASE + 4].cast("H")
    used_index[1] = 1
    zeros = context.Value("q", -1)
    ready = context.Event()
    stop = context.Event()

    def reader() -> None:
        view = memoryview(shared)[USED - BASE: USED - BASE + 4].cast("H")
        ready.set()
        seen = 0
        while not stop.is_set():
            for _ in range(10_000):
                if not view[1]:
                    seen += 1
        zeros.value = seen

    process = context.Process(target=reader)
    process.start()
    try:
        assert ready.wait(10)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            used_index[1] = 1  # a new round; one store, never 0
            queue = Driver.queue_class(8, DESC, AVAIL, USED, mem, event_idx=False, indirect=False,
                               last_avail=0)
            for _ in range(0xFFFF - 1):
                queue.push_used(0, 0)
    finally:
        stop.set()
        process.join(10)
    used_index.release()
    assert process.exitcode == 0
    assert zeros.value == 0
