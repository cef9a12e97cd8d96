"""vhost-user wire format: codes from the spec, layouts, round trips and rejection of bad input."""

from __future__ import annotations

import pytest
from virtiofsd.vhost_user import messages as m


def test_request_codes_and_feature_bits_match_the_spec():
    assert m.FrontendRequest.SET_MEM_TABLE == 5
    assert m.FrontendRequest.SET_VRING_KICK == 12
    assert m.FrontendRequest.SET_BACKEND_REQ_FD == 21
    assert m.FrontendRequest.GET_CONFIG == 24
    assert m.FrontendRequest.RESET_DEVICE == 34
    assert m.FrontendRequest.ADD_MEM_REG == 37
    assert m.FrontendRequest.CHECK_DEVICE_STATE == 43
    assert m.BackendRequest.SHARED_OBJECT_LOOKUP == 8
    assert m.ProtocolFeature.REPLY_ACK == 1 << 3
    assert m.ProtocolFeature.CONFIGURE_MEM_SLOTS == 1 << 15
    assert m.ProtocolFeature.DEVICE_STATE == 1 << 19
    assert m.VirtioFeature.VERSION_1 == 1 << 32
    assert m.VirtioFeatureBit.PROTOCOL_FEATURES == 30
    assert (m.HeaderFlag.VERSION, m.HeaderFlag.REPLY, m.HeaderFlag.NEED_REPLY) == (1, 4, 8)


def test_request_name_survives_unknown_codes():
    assert m.request_name(1) == "GET_FEATURES"
    assert m.request_name(999) == "UNKNOWN_REQUEST(999)"


def test_request_and_reply_framing():
    wire = m.encode_request(m.FrontendRequest.SET_FEATURES, m.encode_u64(0x1_4000_0000),
                            need_reply=True)
    header = m.decode_header(wire[:12])
    assert header == (2, 0x9, 8)
    assert header.need_reply and not header.is_reply
    assert m.decode_u64(wire[12:]) == 0x1_4000_0000

    reply = m.encode_reply(m.FrontendRequest.GET_FEATURES, m.encode_u64(7))
    header = m.decode_header(reply[:12])
    assert header.is_reply and header.flags == 0x5 and header.size == 8


def test_header_rejects_wrong_version_size_and_length():
    with pytest.raises(m.MalformedMessage, match="version"):
        m.decode_header(m.HEADER.pack(1, 0x2, 0))
    with pytest.raises(m.MalformedMessage, match="limit"):
        m.decode_header(m.HEADER.pack(1, 0x1, m.MAX_PAYLOAD_SIZE + 1))
    with pytest.raises(m.MalformedMessage):
        m.decode_header(b"\x01\x00")


def test_payload_size_rules():
    m.check_payload_size(m.FrontendRequest.SET_VRING_ADDR, 40)
    with pytest.raises(m.MalformedMessage, match="expected 40"):
        m.check_payload_size(m.FrontendRequest.SET_VRING_ADDR, 32)
    with pytest.raises(m.MalformedMessage):
        m.check_payload_size(m.FrontendRequest.GET_FEATURES, 8)
    m.check_payload_size(999, 12345)  # unknown requests are not judged here


def test_fd_rules():
    assert m.fd_limits(m.FrontendRequest.ADD_MEM_REG) == (1, 1)
    assert m.fd_limits(m.FrontendRequest.SET_VRING_CALL) == (0, 1)
    assert m.fd_limits(m.FrontendRequest.GET_FEATURES) == (0, 0)
    assert m.fd_limits(999) == (0, 0)


def test_vring_payload_round_trips():
    assert m.decode_vring_state(m.encode_vring_state(1, 1024)) == (1, 1024)
    addr = m.VringAddr(1, 0, 0x7F00_0000_1000, 0x7F00_0000_3000, 0x7F00_0000_2000, 0)
    encoded = m.encode_vring_addr(addr)
    assert len(encoded) == 40
    assert m.decode_vring_addr(encoded) == addr
    assert m.decode_vring_fd_payload(m.encode_vring_fd_payload(3)) == (3, False)
    assert m.decode_vring_fd_payload(m.encode_vring_fd_payload(3, nofd=True)) == (3, True)
    with pytest.raises(m.MalformedMessage, match="reserved"):
        m.decode_vring_fd_payload(m.encode_u64(0x200))
    with pytest.raises(m.MalformedMessage):
        m.decode_vring_state(b"\0" * 7)


def test_memory_table_round_trip_and_size_checks():
    regions = [m.MemoryRegion(0, 0xA0000, 0x7F00_0000_0000, 0),
               m.MemoryRegion(0x100000, 0x3FF00000, 0x7F00_0010_0000, 0x100000)]
    encoded = m.encode_memory_table(regions)
    assert len(encoded) == 8 + 2 * 32
    assert m.decode_memory_table(encoded) == regions
    padded = encoded + b"\0" * (6 * 32)
    assert m.decode_memory_table(padded) == regions
    with pytest.raises(m.MalformedMessage, match="expected 72"):
        m.decode_memory_table(encoded + b"\0" * 8)
    with pytest.raises(m.MalformedMessage, match="regions"):
        m.decode_memory_table(m.MEMORY_TABLE_HEADER.pack(9, 0) + b"\0" * (9 * 32))
    with pytest.raises(m.MalformedMessage, match="regions"):
        m.decode_memory_table(m.MEMORY_TABLE_HEADER.pack(0, 0))


def test_single_region_has_leading_padding():
    region = m.MemoryRegion(0x1000, 0x2000, 0x3000, 0x40)
    encoded = m.encode_single_region(region)
    assert len(encoded) == 40 and encoded[:8] == b"\0" * 8
    assert m.decode_single_region(encoded) == region


def test_config_round_trip_and_bounds():
    encoded = m.encode_config(4, b"abcd", m.CONFIG_FLAG_MIGRATION)
    assert m.decode_config(encoded) == (4, 4, 1, b"abcd")
    with pytest.raises(m.MalformedMessage, match="announces"):
        m.decode_config(m.CONFIG_HEADER.pack(0, 8, 0) + b"abc")
    with pytest.raises(m.MalformedMessage, match="exceeds"):
        m.decode_config(m.CONFIG_HEADER.pack(0, 4096, 0) + b"\0" * 4096)


def test_other_payloads_round_trip():
    assert m.decode_log(m.encode_log(m.LogArea(4096, 0))) == (4096, 0)
    inflight = m.Inflight(8192, 0, 2, 1024)
    assert m.decode_inflight(m.encode_inflight(inflight)) == inflight
    transfer = m.DeviceStateTransfer(1, 0)
    assert m.decode_device_state_transfer(m.encode_device_state_transfer(transfer)) == transfer
