"""Builds the guest kernel and initramfs that the real-guest tests boot.

The guest is deliberately tiny: Debian 12's own kernel (the one ``linux-image-amd64`` points
at, so the guest driver is the one real users run), the modules that virtio-fs needs (plus
those of 9p, see below), and busybox-static as the whole userland.

Tests that need real tools in the guest (Python, getfattr, setfacl, stress-ng...) boot with
the host's root shared read-only over QEMU's 9p (``runner.boot(host_root=True)``): /init then
mounts it at /host, puts fresh proc, sys, dev and tmpfs mounts inside it and binds the
virtio-fs share onto /host/mnt, so ``chroot /host COMMAND`` runs the host's programs against
the share (``in_host`` in scripts/lib.sh).  Everything is derived from Debian packages so a
fresh Debian 12 machine can rebuild it without network access beyond the Debian archive.

The build output is cached in a directory keyed on every input (kernel package, busybox
binary, module list, init script, this builder's format version), so a second run only pays
for the key computation.  The per-boot workload is *not* part of the cached image: Linux
accepts several concatenated cpio archives as one initramfs, so :func:`initramfs_with`
appends a small archive holding ``/workload.sh`` to the cached base for each boot.

Run as a script to build (or find) the image and print its paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import logging
import lzma
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile

logger = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CACHE = pathlib.Path(os.environ.get("VIRTIOFSD_GUEST_CACHE", REPO_ROOT / ".cache" / "guest"))
BUSYBOX = pathlib.Path("/bin/busybox")
KERNEL_META_PACKAGE = "linux-image-amd64"
#: Guest kernels by Debian suite: "bookworm" is 6.1, the machine's own archive; "trixie" is
#: Debian 13's 6.12, the first with virtio-fs multi-queue (Linux 6.11), fetched from the same
#: archive asked for the suite trixie (as shared/tools/reference-daemons.sh does).
KERNELS = ("bookworm", "trixie")
DEFAULT_KERNEL = "bookworm"

# Load order matters: insmod does no dependency resolution.  The order is verified against
# each module's own "depends=" list at build time, so a kernel update that adds a
# dependency fails the build loudly instead of failing inside the guest.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
)

#: Modules a newer kernel no longer has on their own: fscache is part of netfs since Linux 6.4.
FOLDED_MODULES = {"fscache": "netfs"}

#: The 9p tag of the host's root and the kernel command-line word that asks /init to mount it.
HOST_ROOT_TAG = "hostroot"
HOST_ROOT_CMDLINE_FLAG = "virtiofsd_test.host_root"

MOUNT_TAG = "myfs"
GUEST_USER_ID = 1000
GUEST_GROUP_ID = 1000

# Bumped whenever the layout of the built image changes, so stale caches are not reused.
BUILD_FORMAT = "4"

INIT_SCRIPT = f"""#!/bin/busybox sh
# PID 1 of the test guest: mount the virtio-fs share, run /workload.sh, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
for module in {" ".join(MODULES)}; do
    [ -e /lib/modules/$module.ko ] || continue  # built into this kernel
    insmod /lib/modules/$module.ko || echo "GUEST-ERROR insmod $module failed"
done
host_root=no
case " $(cat /proc/cmdline) " in *" {HOST_ROOT_CMDLINE_FLAG} "*) host_root=yes;; esac
mkdir -p /mnt
if mount -t virtiofs {MOUNT_TAG} /mnt; then
    echo "GUEST-MOUNTED"
    if [ $host_root = yes ]; then
        mkdir -p /host
        if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {HOST_ROOT_TAG} /host \\
            && mount -t proc proc /host/proc && mount -t sysfs sysfs /host/sys \\
            && mount -t devtmpfs devtmpfs /host/dev && mount -t tmpfs tmpfs /host/tmp \\
            && mount -t tmpfs tmpfs /host/run && mount -t tmpfs tmpfs /host/var/tmp \\
            && mount --bind /mnt /host/mnt; then
            echo "GUEST-HOST-ROOT"
        else
            echo "GUEST-ERROR host root over 9p failed"
        fi
    fi
    cd /tmp
    sh /workload.sh
    echo "GUEST-WORKLOAD-EXIT $?"
    cd /
    sync
    if [ $host_root = yes ]; then
        umount /host/mnt /host/var/tmp /host/run /host/tmp /host/dev /host/sys /host/proc /host
    fi
    if umount /mnt; then echo "GUEST-UNMOUNTED"; else echo "GUEST-ERROR umount failed"; fi
else
    echo "GUEST-ERROR mount failed"
fi
echo "GUEST-POWEROFF"
poweroff -f
"""

PASSWD = f"root:x:0:0:root:/root:/bin/sh\nuser:x:{GUEST_USER_ID}:{GUEST_GROUP_ID}:user:/tmp:/bin/sh\n"
GROUP = f"root:x:0:\nuser:x:{GUEST_GROUP_ID}:\n"


class ImageError(RuntimeError):
    """The guest image could not be built; the message says which input was at fault."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """Paths of one built image: the kernel and the base initramfs (without a workload)."""

    kernel: pathlib.Path
    initramfs: pathlib.Path


class CpioWriter:
    """Writes a cpio archive in the "newc" format the kernel's initramfs unpacker reads.

    Written here rather than by the cpio tool so that owners and modes are set exactly,
    without needing the files to exist on the host with those owners.
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._next_inode = 1

    def _entry(self, name: str, mode: int, data: bytes, uid: int = 0, gid: int = 0) -> None:
        encoded_name = name.encode() + b"\0"
        fields = (
            self._next_inode, mode, uid, gid, 1, 0, len(data), 0, 0, 0, 0, len(encoded_name), 0,
        )
        self._next_inode += 1
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self._out.write(header + encoded_name)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, 0o040000 | mode, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        # The kernel reads archives in 512-byte blocks; padding keeps a concatenated
        # second archive aligned where the unpacker looks for it.
        self._out.write(b"\0" * (-self._out.tell() % 512))
        return self._out.getvalue()


def is_static_executable(executable: bytes) -> bool:
    """Whether an x86-64 ELF executable has no program interpreter (needs no shared libraries).

    The initramfs carries no libc, so a dynamically linked busybox (Debian's plain "busybox"
    package rather than "busybox-static") would make /init fail to start.
    """
    if executable[:4] != b"\x7fELF" or executable[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", executable, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", executable, 0x36)
    program_interpreter = 3
    for index in range(phnum):
        (segment_type,) = struct.unpack_from("<I", executable, phoff + index * phentsize)
        if segment_type == program_interpreter:
            return False
    return True


def module_depends(module_bytes: bytes) -> list[str]:
    """Returns a kernel module's "depends=" list, read from its ELF .modinfo section.

    The guest image builder must not require kmod's modinfo on the host, and parsing the
    section (rather than grepping the binary) avoids matching strings in other sections.
    """
    if module_bytes[:4] != b"\x7fELF" or module_bytes[4] != 2:
        raise ImageError("kernel module is not a 64-bit ELF object")
    (shoff,) = struct.unpack_from("<Q", module_bytes, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module_bytes, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name_offset = struct.unpack_from("<I", module_bytes, base)[0]
        offset, size = struct.unpack_from("<QQ", module_bytes, base + 0x18)
        return name_offset, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name_offset, offset, size = section(index)
        name_end = module_bytes.index(b"\0", names_offset + name_offset)
        if module_bytes[names_offset + name_offset:name_end] != b".modinfo":
            continue
        for entry in module_bytes[offset:offset + size].split(b"\0"):
            if entry.startswith(b"depends="):
                value = entry[len(b"depends="):].decode()
                return [dependency for dependency in value.split(",") if dependency]
        return []
    raise ImageError("kernel module has no .modinfo section")


def read_module(path: pathlib.Path) -> bytes:
    """Reads a module, decompressing the .ko.xz form Debian may ship (insmod in busybox
    is not guaranteed to handle compressed modules)."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko"):
        return path.read_bytes()
    raise ImageError(f"unsupported kernel module compression: {path}")


def _run(argv: list[str], cwd: pathlib.Path | None = None) -> str:
    completed = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed ({completed.returncode}): {completed.stderr.strip()}")
    return completed.stdout


def _apt_options(cache: pathlib.Path, suite: str) -> list[str]:
    """apt options for ``suite``: none for the machine's own; else a private source list (the
    machine's first archive stanza with the suite replaced) and private package lists, so the
    machine's apt configuration is never touched."""
    if suite == DEFAULT_KERNEL:
        return []
    apt = cache / f"apt-{suite}"
    lists = apt / "lists"
    sources = apt / f"{suite}.sources"
    options = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=/dev/null",
               "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache::archives={apt}"]
    if not any(lists.glob("*Packages*")):
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        stanza = pathlib.Path("/etc/apt/sources.list.d/debian.sources").read_text().split("\n\n")[0]
        sources.write_text(re.sub(r"(?m)^Suites:.*$", f"Suites: {suite}", stanza) + "\n")
        _run(["apt-get", *options, "update", "-qq"])
    return options


def kernel_package_name(apt_options: list[str] = ()) -> str:
    """Resolves the versioned kernel package that the linux-image-amd64 meta package depends on."""
    output = _run(["apt-cache", *apt_options, "depends", KERNEL_META_PACKAGE])
    match = re.search(r"Depends:\s*(linux-image-\S+)", output)
    if not match:
        raise ImageError(f"apt-cache shows no kernel dependency for {KERNEL_META_PACKAGE}:\n{output}")
    return match.group(1)


def fetch_kernel_package(cache: pathlib.Path, package: str,
                         apt_options: list[str] = ()) -> pathlib.Path:
    """Downloads (without installing) the kernel package into the cache, once."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    _run(["apt-get", *apt_options, "download", "-q", package], cwd=debs)
    downloaded = sorted(debs.glob(f"{package}_*.deb"))
    if not downloaded:
        raise ImageError(f"apt-get download {package} produced no .deb in {debs}")
    return downloaded[-1]


def file_sha256(path: pathlib.Path) -> str:
    """Hex SHA-256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_module(tree: pathlib.Path, name: str) -> pathlib.Path:
    candidates = [
        path for path in tree.rglob(f"{name}.ko*")
        if path.name in (f"{name}.ko", f"{name}.ko.xz", f"{name}.ko.zst")
    ]
    if len(candidates) != 1:
        raise ImageError(f"expected one module {name} under {tree}, found {candidates}")
    return candidates[0]


def _builtin_modules(module_tree: pathlib.Path) -> set[str]:
    """Names of the modules compiled into the kernel (its ``modules.builtin``)."""
    names: set[str] = set()
    for listing in module_tree.glob("*/modules.builtin"):
        names.update(pathlib.PurePosixPath(line).name.split(".ko")[0]
                     for line in listing.read_text().split())
    return names


def _check_load_order(depends: dict[str, list[str]], builtin: set[str] = frozenset()) -> None:
    loaded: set[str] = set(builtin)
    for name in MODULES:
        if name not in depends:
            continue
        missing = [dependency for dependency in depends[name] if dependency not in loaded]
        if missing:
            raise ImageError(f"module {name} needs {missing} loaded first; update MODULES")
        loaded.add(name)


def base_initramfs(modules: dict[str, bytes]) -> bytes:
    """The cached part of the initramfs: busybox, /init, users, and the modules."""
    archive = CpioWriter()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "sys", "tmp"):
        archive.directory(directory)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    archive.file("etc/passwd", PASSWD.encode())
    archive.file("etc/group", GROUP.encode())
    archive.file("etc/shells", b"/bin/sh\n")
    for name, data in modules.items():
        archive.file(f"lib/modules/{name}.ko", data)
    return archive.finish()


def workload_archive(script: str, extra_files: dict[str, bytes] | None = None) -> bytes:
    """A small second cpio archive holding the per-boot workload script."""
    archive = CpioWriter()
    archive.file("workload.sh", script.encode(), 0o755)
    for name, data in (extra_files or {}).items():
        archive.file(name, data, 0o755)
    return archive.finish()


def build(cache: pathlib.Path = DEFAULT_CACHE, kernel: str = DEFAULT_KERNEL) -> GuestImage:
    """Returns the image for the current inputs, building it if the cache has none.

    ``kernel`` is one of :data:`KERNELS`; each has its own cached image."""
    if kernel not in KERNELS:
        raise ImageError(f"unknown guest kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if not BUSYBOX.is_file():
        raise ImageError(f"{BUSYBOX} is missing; install busybox-static")
    if not is_static_executable(BUSYBOX.read_bytes()):
        raise ImageError(f"{BUSYBOX} is dynamically linked; install busybox-static")
    apt_options = _apt_options(cache, kernel)
    package = kernel_package_name(apt_options)
    deb = fetch_kernel_package(cache, package, apt_options)
    key_source = "\n".join(
        [BUILD_FORMAT, deb.name, file_sha256(BUSYBOX), ",".join(MODULES), INIT_SCRIPT, PASSWD, GROUP]
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    target = cache / f"image-{key}"
    image = GuestImage(kernel=target / "vmlinuz", initramfs=target / "initramfs.cpio")
    if image.kernel.is_file() and image.initramfs.is_file():
        return image

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as scratch:
        tree = pathlib.Path(scratch) / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise ImageError(f"expected one vmlinuz in {deb}, found {kernels}")
        module_tree = tree / "lib" / "modules"
        if not module_tree.is_dir():  # trixie's merged /usr
            module_tree = tree / "usr" / "lib" / "modules"
        builtin = _builtin_modules(module_tree)
        folded = {name for name, into in FOLDED_MODULES.items()
                  if not any(module_tree.rglob(f"{name}.ko*"))
                  and (into in builtin or any(module_tree.rglob(f"{into}.ko*")))}
        modules = {name: read_module(_find_module(module_tree, name))
                   for name in MODULES if name not in builtin and name not in folded}
        _check_load_order({name: module_depends(data) for name, data in modules.items()},
                          builtin)

        staging = pathlib.Path(scratch) / "out"
        staging.mkdir()
        shutil.copyfile(kernels[0], staging / "vmlinuz")
        (staging / "initramfs.cpio").write_bytes(base_initramfs(modules))
        # Rename into place last so that a concurrent or interrupted build never leaves a
        # half-written image that a later run would take for complete.
        try:
            os.rename(staging, target)
        except OSError:
            if not (image.kernel.is_file() and image.initramfs.is_file()):
                raise
    logger.info("built guest image %s from %s", target, deb.name)
    return image


def initramfs_with(image: GuestImage, script: str, destination: pathlib.Path,
                   extra_files: dict[str, bytes] | None = None) -> pathlib.Path:
    """Writes the base initramfs followed by the workload archive to ``destination``.

    ``extra_files`` (name relative to the guest's /, contents) are added executable, for
    workloads that bring their own tools.
    """
    with destination.open("wb") as out:
        out.write(image.initramfs.read_bytes())
        out.write(workload_archive(script, extra_files))
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=pathlib.Path, default=DEFAULT_CACHE,
                        help=f"cache directory (default {DEFAULT_CACHE})")
    parser.add_argument("--kernel", choices=KERNELS, default=DEFAULT_KERNEL,
                        help=f"guest kernel by Debian suite (default {DEFAULT_KERNEL})")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        image = build(arguments.cache, arguments.kernel)
    except ImageError as error:
        print(f"image build failed: {error}", file=sys.stderr)
        return 1
    print(f"kernel {image.kernel}")
    print(f"initramfs {image.initramfs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
