"""Bounded fuzzing of the FUSE decoder and the split-ring walker, for every CI run.

Hypothesis drives the targets of ``tests/fuzz/targets.py`` three ways: raw header fields over
arbitrary argument bytes (structure-blind), mutations of a well-formed request per opcode (deep
into each decoder), and random ring layouts.  Each test is capped in examples and has no
per-example deadline, so the whole module stays within a few seconds; ``bench/fuzz_long.py``
is the million-input run (see docs/hostile-input.md for its figures).

A failure here is a crash as :mod:`fuzz.targets` defines it; hypothesis prints the shrunk input.
"""

from __future__ import annotations

import logging
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtiofsd.virtio.native_queue import NATIVE_AVAILABLE
from fuzz.targets import FUSE_SEEDS, INTERESTING_32, FuseTarget, RingTarget, encode_request, \
    mutate_request
from virtiofsd.fuse import abi

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["memfs", "passthrough"])
def fuse_target(request, tmp_path_factory):
    """The router over the in-memory fake, then over the real passthrough file system.

    FALLOCATE is left out for the passthrough share, which lives on the host's disk here: a
    fuzzed length would really allocate (the long run uses a small tmpfs instead).
    """
    logger = logging.getLogger("virtiofsd")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the malformed-request warnings are expected by the thousand
    if request.param == "memfs":
        target = FuseTarget()
    else:
        target = FuseTarget("passthrough", str(tmp_path_factory.mktemp("fuzz-share")),
                            skip_opcodes=frozenset({abi.Opcode.FALLOCATE}))
    yield target
    target.close()
    logger.setLevel(level)


opcodes = st.one_of(st.sampled_from([int(op) for op in abi.Opcode]),
                    st.integers(0, 0xFFFFFFFF))
lengths = st.one_of(st.none(), st.sampled_from(INTERESTING_32), st.integers(0, 0xFFFFFFFF))
writable_sizes = st.lists(st.sampled_from([0, 1, 8, 15, 16, 17, 64, 4096]), max_size=4)


@FUZZ
@given(opcode=opcodes, nodeid=st.sampled_from([0, 1, 2, 3, (1 << 64) - 1]),
       args=st.binary(max_size=300), length=lengths,
       extlen=st.one_of(st.none(), st.integers(0, 0xFFFF)),
       cuts=st.lists(st.integers(0, 400), max_size=4), writable=writable_sizes)
def test_arbitrary_requests_get_a_well_formed_answer(fuse_target, opcode, nodeid, args, length,
                                                     extlen, cuts, writable) -> None:
    request = encode_request(opcode, nodeid, args, length=length, extlen=extlen)
    fuse_target.feed(request, sorted(cut for cut in cuts if cut <= len(request)), writable)


@FUZZ
@given(seed=st.integers(0, 1 << 32))
def test_mutated_requests_get_a_well_formed_answer(fuse_target, seed) -> None:
    fuse_target.feed(*mutate_request(random.Random(seed)))


@pytest.mark.parametrize("opcode, nodeid, args", FUSE_SEEDS,
                         ids=[str(seed[0]) for seed in FUSE_SEEDS])
def test_every_argument_slot_at_its_extremes(fuse_target, opcode, nodeid, args) -> None:
    """Each 32- and 64-bit slot of a well-formed argument block, in turn, set to values no guest
    kernel sends: this reaches the plugin with absurd sizes, flags and modes (a u32 open flag
    with bit 31 set once made the passthrough plugin raise OverflowError)."""
    fuse_target.reset()  # node 2 and handle 1 exist again, whatever earlier inputs did
    edges = [("<I", 4, value) for value in (0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)]
    edges += [("<Q", 8, value) for value in (1 << 63, (1 << 64) - 1)]
    for layout, width, value in edges:
        for slot in range(len(args) // width):
            block = bytearray(args)
            struct.pack_into(layout, block, width * slot, value)
            request = encode_request(opcode, nodeid, bytes(block))
            fuse_target.feed(request, [abi.IN_HEADER.size], [16, 4096])


@pytest.mark.parametrize("opcode, nodeid, args", FUSE_SEEDS,
                         ids=[str(seed[0]) for seed in FUSE_SEEDS])
def test_every_seed_is_served(fuse_target, opcode, nodeid, args) -> None:
    """The seeds themselves are well formed: a fuzzer that starts from garbage tests little."""
    fuse_target.feed(encode_request(opcode, nodeid, args), [abi.IN_HEADER.size], [16, 4096])


@FUZZ
@given(seed=st.integers(0, 1 << 32))
def test_random_rings_never_crash_the_walker(seed) -> None:
    rng = random.Random(seed)
    target = RingTarget()
    target.run(*target.random_layout(rng))


@FUZZ
@given(seed=st.integers(0, 1 << 32))
def test_the_compiled_ring_walks_random_rings_as_the_python_one(seed) -> None:
    """Same layout, same chains, same bytes, same errors: the Python walker is the reference
    for the compiled one (tests/fuzz/targets.py, RingTarget.compare)."""
    if not NATIVE_AVAILABLE:
        pytest.skip("the compiled virtqueue module is not built")
    rng = random.Random(seed)
    target = RingTarget()
    target.compare(target.random_layout(rng))


def test_the_ring_fuzzer_reaches_valid_chains() -> None:
    """Enough layouts yield chains the walker accepts, or the walker is barely exercised."""
    rng = random.Random(7)
    target = RingTarget()
    served = sum(target.run(*target.random_layout(rng)) > 0 for _ in range(300))
    assert served > 30
