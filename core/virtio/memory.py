"""Guest memory as the back-end sees it: a table of mapped regions and address translation.

The front-end shares guest RAM as file descriptors (SET_MEM_TABLE, ADD_MEM_REG).  Each region
comes with three addresses:

* ``guest_phys_addr`` (GPA): where the guest sees it.  Descriptors carry GPAs.
* ``userspace_addr``: where the *front-end* has it mapped in its own process.  Only the ring
  addresses of SET_VRING_ADDR use these, so they are translated once, to GPAs, when that
  message arrives (:meth:`GuestMemory.vva_to_gpa`).
* ``mmap_offset``: where the region starts inside the fd.

A :class:`GuestMemory` is immutable.  Adding or removing a region builds a new table, and the
control plane swaps the reference in one assignment; worker threads pick up the new table at
their next wake-up.  Old mappings are never unmapped explicitly: a ``memoryview`` handed to a
request handler keeps its ``mmap`` alive, and the mapping goes away when the last view does.
That is what makes replacing the table under running queues safe: nobody can be left holding a
view into unmapped memory (which would be a SIGSEGV, not an exception).

Every lookup is bounds-checked and raises :class:`GuestMemoryError`, a
:class:`~virtiofsd.errors.GuestProtocolError`: an address outside guest RAM is the guest's
fault (or the front-end's), never a reason to crash.  Python integers do not overflow, but
addresses are still checked against the 64-bit space so that ``gpa + length`` wrapping in a
C front-end cannot be mistaken for a valid range here.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from virtiofsd.errors import GuestProtocolError

__all__ = ["GuestMemory", "GuestMemoryError", "MappedRegion", "map_region"]

_ADDRESS_LIMIT = 1 << 64


class GuestMemoryError(GuestProtocolError):
    """An address range is not (entirely) backed by guest memory, or a table is inconsistent."""


@dataclass(frozen=True, slots=True)
class MappedRegion:
    """One region of guest RAM and the host view of it.

    ``view`` must be exactly ``size`` bytes long; it is usually a slice of an ``mmap`` of the
    region's fd, but any writable buffer works (tests use ``bytearray``).
    """

    guest_phys_addr: int
    size: int
    userspace_addr: int
    view: memoryview

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise GuestMemoryError(f"memory region at GPA {self.guest_phys_addr:#x} is empty")
        if not 0 <= self.guest_phys_addr < _ADDRESS_LIMIT or self.gpa_end > _ADDRESS_LIMIT:
            raise GuestMemoryError(
                f"memory region GPA {self.guest_phys_addr:#x}+{self.size:#x} "
                "overflows the 64-bit address space"
            )
        if not 0 <= self.userspace_addr < _ADDRESS_LIMIT or self.vva_end > _ADDRESS_LIMIT:
            raise GuestMemoryError(
                f"memory region user address {self.userspace_addr:#x}+{self.size:#x} "
                "overflows the 64-bit address space"
            )
        if self.view.nbytes != self.size:
            raise GuestMemoryError(
                f"memory region at GPA {self.guest_phys_addr:#x}: view has "
                f"{self.view.nbytes} bytes, region has {self.size}"
            )

    @property
    def gpa_end(self) -> int:
        return self.guest_phys_addr + self.size

    @property
    def vva_end(self) -> int:
        return self.userspace_addr + self.size

    def describe(self) -> str:
        return (
            f"GPA {self.guest_phys_addr:#x}-{self.gpa_end:#x} "
            f"(user address {self.userspace_addr:#x})"
        )


def map_region(
    fd: int, guest_phys_addr: int, size: int, userspace_addr: int, mmap_offset: int
) -> MappedRegion:
    """Map ``size`` bytes of ``fd`` starting at ``mmap_offset``, shared and read-write.

    The caller keeps ownership of ``fd`` and may close it right after this returns: the
    mapping does not need it.  The offset need not be page-aligned (QEMU's often is not): we
    map from the page boundary below it and slice.  A regular file (memfd, hugetlbfs,
    /dev/shm) shorter than ``mmap_offset + size`` is refused, because touching a mapping beyond
    the end of its file raises SIGBUS instead of an exception.
    """
    if size <= 0:
        raise GuestMemoryError(f"memory region at GPA {guest_phys_addr:#x} is empty")
    if mmap_offset < 0 or mmap_offset + size > _ADDRESS_LIMIT:
        raise GuestMemoryError(f"invalid mmap offset {mmap_offset:#x} for a {size:#x}-byte region")
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_size < mmap_offset + size:
        raise GuestMemoryError(
            f"memory region at GPA {guest_phys_addr:#x}: fd is {info.st_size:#x} bytes, "
            f"region needs {mmap_offset + size:#x}"
        )
    aligned_offset = mmap_offset - mmap_offset % mmap.ALLOCATIONGRANULARITY
    lead = mmap_offset - aligned_offset
    try:
        mapping = mmap.mmap(
            fd,
            size + lead,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=aligned_offset,
        )
    except (OSError, ValueError, OverflowError) as err:
        raise GuestMemoryError(
            f"cannot map memory region at GPA {guest_phys_addr:#x} "
            f"(size {size:#x}, offset {mmap_offset:#x}): {err}"
        ) from err
    return MappedRegion(guest_phys_addr, size, userspace_addr, memoryview(mapping)[lead:])


class GuestMemory:
    """An immutable, sorted, non-overlapping table of :class:`MappedRegion`.

    Lookups bisect on the region start addresses, which keeps the hot path (one translation per
    descriptor) at a couple of list indexings even with hundreds of memory slots.
    """

    __slots__ = ("_ends", "_regions", "_starts", "_views")

    def __init__(self, regions: Iterable[MappedRegion] = ()) -> None:
        ordered = sorted(regions, key=lambda region: region.guest_phys_addr)
        for before, after in itertools.pairwise(ordered):
            if after.guest_phys_addr < before.gpa_end:
                raise GuestMemoryError(
                    f"memory region {after.describe()} overlaps {before.describe()}"
                )
        self._regions: tuple[MappedRegion, ...] = tuple(ordered)
        self._starts = [region.guest_phys_addr for region in ordered]
        self._ends = [region.gpa_end for region in ordered]
        self._views = [region.view for region in ordered]

    @property
    def regions(self) -> tuple[MappedRegion, ...]:
        return self._regions

    def __len__(self) -> int:
        return len(self._regions)

    def __repr__(self) -> str:
        inside = ", ".join(region.describe() for region in self._regions)
        return f"GuestMemory([{inside}])"

    # ---- building new tables --------------------------------------------------------

    def with_region(self, region: MappedRegion) -> GuestMemory:
        """A new table with ``region`` added (rejected if it overlaps an existing one)."""
        return GuestMemory((*self._regions, region))

    def without_region(
        self, guest_phys_addr: int, size: int, userspace_addr: int
    ) -> tuple[GuestMemory, MappedRegion]:
        """A new table without the region matching all three values, and the removed region."""
        for position, region in enumerate(self._regions):
            if (
                region.guest_phys_addr == guest_phys_addr
                and region.size == size
                and region.userspace_addr == userspace_addr
            ):
                rest = self._regions[:position] + self._regions[position + 1 :]
                return GuestMemory(rest), region
        raise GuestMemoryError(
            f"no memory region at GPA {guest_phys_addr:#x} with size {size:#x} and "
            f"user address {userspace_addr:#x}"
        )

    # ---- translation ----------------------------------------------------------------

    def translate(self, gpa: int, length: int) -> memoryview:
        """The host view of ``[gpa, gpa + length)``, which must lie inside one region."""
        position = bisect.bisect_right(self._starts, gpa) - 1
        if position >= 0 and length >= 0:
            offset = gpa - self._starts[position]
            if gpa + length <= self._ends[position]:
                return self._views[position][offset : offset + length]
        raise GuestMemoryError(self._outside(gpa, length))

    def slices(self, gpa: int, length: int) -> list[memoryview]:
        """Host views covering ``[gpa, gpa + length)``, which may span adjacent regions."""
        views: list[memoryview] = []
        self.extend_views(views, gpa, length)
        return views

    def extend_views(self, out: list[memoryview], gpa: int, length: int) -> None:
        """Append to ``out`` the views covering the range; the chain walker's hot path.

        Appending into the caller's list avoids building a throwaway list per descriptor.
        Nothing is appended if the range is invalid.
        """
        position = bisect.bisect_right(self._starts, gpa) - 1
        if position >= 0 and length >= 0:
            end = gpa + length
            region_end = self._ends[position]
            offset = gpa - self._starts[position]
            if end <= region_end:
                out.append(self._views[position][offset : offset + length])
                return
            if gpa < region_end:
                self._extend_across(out, position, gpa, end)
                return
        raise GuestMemoryError(self._outside(gpa, length))

    def region_bounds(self, gpa: int) -> tuple[int, int, memoryview]:
        """(start GPA, end GPA, view) of the region holding ``gpa``, which must be in one: the
        chain walker caches it to slice the next buffers of a chain without a lookup."""
        position = bisect.bisect_right(self._starts, gpa) - 1
        if position < 0 or gpa >= self._ends[position]:
            raise GuestMemoryError(self._outside(gpa, 1))
        return self._starts[position], self._ends[position], self._views[position]

    def _extend_across(self, out: list[memoryview], position: int, gpa: int, end: int) -> None:
        pieces: list[memoryview] = []
        cursor = gpa
        offset = gpa - self._starts[position]
        while True:
            stop = min(end, self._ends[position])
            pieces.append(self._views[position][offset : offset + (stop - cursor)])
            cursor = stop
            if cursor == end:
                break
            position += 1
            if position == len(self._starts) or self._starts[position] != cursor:
                raise GuestMemoryError(self._outside(gpa, end - gpa))
            offset = 0
        out.extend(pieces)

    def vva_to_gpa(self, vva: int) -> int:
        """Translate a front-end virtual address (SET_VRING_ADDR) to a guest-physical one."""
        for region in self._regions:
            if region.userspace_addr <= vva < region.vva_end:
                return region.guest_phys_addr + (vva - region.userspace_addr)
        raise GuestMemoryError(f"front-end address {vva:#x} is not in any memory region")

    def _outside(self, gpa: int, length: int) -> str:
        return (
            f"guest range {gpa:#x}+{length:#x} is not backed by guest memory "
            f"({len(self._regions)} regions)"
        )
