"""The device-state stream: round trips, and clear refusals of what is not ours or not whole."""

from __future__ import annotations

import stat
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtiofsd_plugins.migration import format as fmt


def sample() -> fmt.DeviceState:
    state = fmt.DeviceState(fmt.SessionState(7, 38, 0x48449829 | (1 << 40), 1 << 20, 131072, 256),
                            next_nodeid=42, next_fh=17)
    state.inodes += [
        fmt.InodeState(1, 5, stat.S_IFDIR, fmt.Location(fmt.LocationKind.ROOT)),
        fmt.InodeState(2, 3, stat.S_IFREG, fmt.Location(fmt.LocationKind.PATH, path=b"d/\xffile"),
                       verify=(1, b"\x01\x02\x03\x04\x05\x06\x07\x08")),
        fmt.InodeState(3, 1, stat.S_IFDIR, fmt.Location(fmt.LocationKind.HANDLE, path=b"sub",
                                                        handle_type=0x81, handle=b"h" * 20)),
        fmt.InodeState(4, 2, stat.S_IFREG,
                       fmt.Location(fmt.LocationKind.INVALID, reason="unlinked: gone ✗")),
    ]
    state.handles += [fmt.HandleState(3, 2, 0o2, 4096), fmt.HandleState(16, 3, 0o200000, 0)]
    state.posix_locks += [
        fmt.PosixLockState(2, 0xDEADBEEF_00000001, 1234, ((0, 9, 0), (20, (1 << 63) - 1, 1)),
                           handles=(3, 1 << 40)),
        fmt.PosixLockState(4, 7, 0, ()),
    ]
    state.flocks += [fmt.FlockState(3, 2, 1), fmt.FlockState(16, 3, 0)]
    return state


def test_a_state_survives_a_round_trip():
    assert fmt.decode(fmt.encode(sample())) == sample()


def test_an_empty_state_survives_a_round_trip():
    empty = fmt.DeviceState(fmt.SessionState(0, 0, 0, 0, 0, 0), 2, 1)
    assert fmt.decode(fmt.encode(empty)) == empty


@pytest.mark.parametrize("cut", [0, 3, 8, 15, 16, 30, -5, -1])
def test_a_truncated_stream_is_refused(cut):
    data = fmt.encode(sample())
    with pytest.raises(fmt.StateFormatError, match="truncated|no header"):
        fmt.decode(data[:cut])


def test_a_foreign_stream_is_refused_by_its_magic():
    # What a Rust virtiofsd stream starts with: a postcard enum tag, not our magic.
    with pytest.raises(fmt.StateFormatError, match="not a pyvirtiofsd device state"):
        fmt.decode(b"\x01\x05" + bytes(64))


def test_a_state_with_locks_is_version_3():
    assert fmt.encode(sample())[8:12] == (3).to_bytes(4, "little")


def test_a_version_2_stream_loads_without_the_lock_owners_handles():
    """What a daemon from before the owners' handles travelled sends: locks, no handles."""
    old = fmt.encode(sample(), version=2)
    assert old[8:12] == (2).to_bytes(4, "little")
    expected = sample()
    expected.posix_locks = [fmt.PosixLockState(held.nodeid, held.owner, held.pid, held.ranges)
                            for held in expected.posix_locks]
    expected.version = 2
    assert fmt.decode(old) == expected


def test_a_version_1_stream_loads_without_locks():
    """What a daemon from before the locks travelled sends: the same body, no lock sections."""
    old = fmt.encode(sample(), version=1)
    assert old[8:12] == (1).to_bytes(4, "little")
    loaded = fmt.decode(old)
    expected = sample()
    expected.posix_locks, expected.flocks, expected.version = [], [], 1
    assert loaded == expected


def test_a_version_1_stream_padded_with_lock_sections_is_refused():
    """A newer body labelled version 1 has bytes the old layout does not explain."""
    data = bytearray(fmt.encode(sample()))
    data[8] = 1
    with pytest.raises(fmt.StateFormatError, match="unread bytes"):
        fmt.decode(bytes(data))


@pytest.mark.parametrize("cut", [-3, -8, -20])
def test_a_stream_cut_in_its_locks_is_refused(cut):
    data = fmt.encode(sample())
    body = data[16:-4][:cut]
    cut_stream = data[:12] + len(body).to_bytes(4, "little") + body
    with pytest.raises(fmt.StateFormatError, match="truncated in .*(lock|flock)"):
        fmt.decode(cut_stream + zlib.crc32(body).to_bytes(4, "little"))


@pytest.mark.parametrize("version", [0, 4])
def test_an_unknown_version_is_refused(version):
    data = bytearray(fmt.encode(sample()))
    data[8] = version
    with pytest.raises(fmt.StateFormatError,
                       match=f"version {version} is not supported .*versions 1, 2, 3"):
        fmt.decode(bytes(data))


def test_a_corrupted_body_fails_the_checksum():
    data = bytearray(fmt.encode(sample()))
    data[40] ^= 0xFF
    with pytest.raises(fmt.StateFormatError, match="checksum"):
        fmt.decode(bytes(data))


def test_trailing_bytes_are_refused():
    with pytest.raises(fmt.StateFormatError, match="after its end"):
        fmt.decode(fmt.encode(sample()) + b"\0")


def test_an_unknown_location_kind_is_refused():
    state = sample()
    data = bytearray(fmt.encode(state))
    # The kind byte of the first inode: header, session, two counters, count, then u64 u64 u32.
    position = 16 + 28 + 8 + 8 + 4 + 8 + 8 + 4
    data[position] = 9
    body = bytes(data[16:-4])
    data[-4:] = zlib.crc32(body).to_bytes(4, "little")
    with pytest.raises(fmt.StateFormatError, match="unknown location kind 9"):
        fmt.decode(bytes(data))


def _sealed(body: bytes, version: int = fmt.VERSION) -> bytes:
    """A stream around ``body`` with a correct header and checksum, so decoding reaches it."""
    return (fmt.MAGIC + version.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body
            + zlib.crc32(body).to_bytes(4, "little"))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(version=st.sampled_from(fmt.READABLE_VERSIONS),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000))
def test_a_hostile_body_is_refused_cleanly(version, edits, cut):
    """Whatever the body says (counts, lengths, kinds), behind a valid header and checksum:
    a state, or StateFormatError naming the problem; never another exception."""
    body = bytearray(fmt.encode(sample(), version=version)[16:-4])
    for position, value in edits:
        body[position % len(body)] = value
    if cut % 3 == 0:
        body = body[:cut % (len(body) + 1)]
    try:
        state = fmt.decode(_sealed(bytes(body), version))
    except fmt.StateFormatError:
        return
    assert isinstance(state, fmt.DeviceState) and state.version == version
