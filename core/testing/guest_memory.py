"""Fake guest RAM for the test front-end: memfd regions shared with the daemon.

A vhost-user back-end never sees the guest; it sees the file descriptors the front-end hands
over in SET_MEM_TABLE and maps them itself.  So "guest memory" here is just one or more
memfds, each mapped MAP_SHARED into this process too, so that what we write (descriptors,
requests) the daemon reads, and what it writes (used ring, replies) we read back.

Every region carries three addresses, as QEMU sends them:

* the guest-physical address (GPA) at which the guest would see it; descriptors carry GPAs;
* ``userspace_addr``, the address of the mapping in the front-end's own address space.  QEMU
  sends a real pointer; the back-end only uses it to translate SET_VRING_ADDR, so any value
  consistent between the region table and the vring addresses is fine.  We send
  ``USERSPACE_BASE + gpa``, a value deliberately unlike the GPA so a back-end that mixes the two
  up fails loudly instead of working by accident;
* the mmap offset inside the fd (always 0 here).

Allocation is a bump allocator: test sessions are short and rings/buffers live as long as the
connection, so nothing is ever freed individually.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import mmap
import os

__all__ = ["GuestMemory", "GuestRegion", "USERSPACE_BASE"]

USERSPACE_BASE = 0x7F00_0000_0000
"""Fake front-end virtual address of GPA 0; see the module docstring."""

log = logging.getLogger(__name__)

_DEFAULT_REGION_SIZE = 256 * 1024 * 1024


@dataclasses.dataclass(eq=False)
class GuestRegion:
    """One memfd-backed slice of guest-physical address space."""

    guest_phys_addr: int
    size: int
    fd: int
    mapping: mmap.mmap
    view: memoryview
    userspace_addr: int
    mmap_offset: int = 0
    next_free: int = 0
    """Offset of the first unallocated byte (the bump pointer)."""

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.size


class GuestMemory:
    """A set of memfd regions plus a bump allocator over them.

    ``region_sizes`` and ``base_gpas`` describe the layout.  The default is one 256 MiB region
    (memfd pages cost nothing until touched) at GPA 1 MiB: not 0, so a back-end that treats
    GPA 0 as "unset" or forgets to subtract the region base is caught.  Regions must not overlap.
    """

    def __init__(
        self,
        region_sizes: tuple[int, ...] = (_DEFAULT_REGION_SIZE,),
        base_gpas: tuple[int, ...] | None = None,
    ) -> None:
        if base_gpas is None:
            base_gpas = _packed_layout(region_sizes)
        if len(base_gpas) != len(region_sizes):
            raise ValueError("need one base address per region")
        self.regions: list[GuestRegion] = []
        try:
            for gpa, size in sorted(zip(base_gpas, region_sizes, strict=True)):
                if self.regions and gpa < self.regions[-1].end:
                    raise ValueError(f"guest region at {gpa:#x} overlaps the previous one")
                self.regions.append(_make_region(gpa, size))
        except BaseException:
            self.close()
            raise

    # -- allocation ---------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 64) -> int:
        """Reserve ``size`` bytes aligned to ``align`` and return their GPA (zero-filled).

        The allocation never straddles two regions, so a buffer is always one descriptor.
        """
        if size <= 0:
            raise ValueError(f"allocation size must be positive, got {size}")
        for region in self.regions:
            start = _round_up(region.guest_phys_addr + region.next_free, align)
            if start + size <= region.end:
                region.next_free = start + size - region.guest_phys_addr
                return start
        raise OSError(errno.ENOMEM, f"guest memory exhausted allocating {size} bytes")

    # -- access -------------------------------------------------------------------------------

    def region_of(self, gpa: int, length: int = 1) -> GuestRegion:
        """The region holding ``[gpa, gpa + length)``; ValueError if none holds all of it."""
        for region in self.regions:
            if region.guest_phys_addr <= gpa and gpa + length <= region.end:
                return region
        raise ValueError(f"[{gpa:#x}, +{length:#x}) is not inside one guest region")

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable memoryview of guest memory; hold it only while the memory is open."""
        region = self.region_of(gpa, length)
        offset = gpa - region.guest_phys_addr
        return region.view[offset : offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def userspace_addr(self, gpa: int) -> int:
        """The fake front-end virtual address of ``gpa`` (what SET_VRING_ADDR carries)."""
        region = self.region_of(gpa)
        return region.userspace_addr + (gpa - region.guest_phys_addr)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and close every region; idempotent."""
        regions, self.regions = self.regions, []
        for region in regions:
            region.view.release()
            os.close(region.fd)
            try:
                region.mapping.close()
            except BufferError:
                log.debug(
                    "guest region %#x still viewed; unmapped when the last view goes",
                    region.guest_phys_addr,
                )

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _make_region(gpa: int, size: int) -> GuestRegion:
    if size <= 0 or size % mmap.PAGESIZE or gpa % mmap.PAGESIZE:
        raise ValueError(f"region {gpa:#x}+{size:#x} must be page aligned and non-empty")
    fd = os.memfd_create(f"guest-ram@{gpa:#x}", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return GuestRegion(
        guest_phys_addr=gpa,
        size=size,
        fd=fd,
        mapping=mapping,
        view=memoryview(mapping),
        userspace_addr=USERSPACE_BASE + gpa,
    )


def _packed_layout(region_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Base GPAs starting at 1 MiB with a 1 MiB hole between regions (holes catch overruns)."""
    bases = []
    gpa = 1 << 20
    for size in region_sizes:
        bases.append(gpa)
        gpa += _round_up(size, 1 << 20) + (1 << 20)
    return tuple(bases)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align
