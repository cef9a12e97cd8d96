"""One guest boot per daemon running everyday shell tools on the share, checked from both sides.

Every check the guest makes (scripts/main.sh) becomes its own test, so a failure names the
operation that broke together with what the guest saw; the host-side tests then look at the
same files directly on the host: contents, owners, modes, link targets and times.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import os
import pathlib
import re
import stat

import pytest

from . import image, runner

BIG_FILE_BYTES = 256 * 1024 * 1024
TREE_DIRS = 30
TREE_FILES_PER_DIR = 100
TREE_FILES = TREE_DIRS * TREE_FILES_PER_DIR
HELLO = b"hello from the host\n"
TOUCH_D_EPOCH = calendar.timegm((2001, 2, 3, 4, 5, 6))
GUEST_USER = (1000, 1000)
BOOT_TIMEOUT = float(os.environ.get("VIRTIOFSD_GUEST_TIMEOUT", "600"))

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "main.sh"
CHECK_LINE = re.compile(r"^(?:check|expect|refuse)\s+(\w+)", re.MULTILINE)
GUEST_CHECKS = CHECK_LINE.findall(SCRIPT.read_text())


def tree_file_content(directory: int, index: int) -> bytes:
    return f"d{directory:02d}/f{index:03d}\n".encode() * (1 + index % 7)


def write_big_file(path: pathlib.Path) -> str:
    """Writes deterministic, incompressible-looking data and returns its sha256."""
    digest = hashlib.sha256()
    block_size = 1024 * 1024
    with path.open("wb") as stream:
        for block_number in range(BIG_FILE_BYTES // block_size):
            seed = hashlib.sha256(block_number.to_bytes(8, "little")).digest()
            block = seed * (block_size // len(seed))
            # Different for every block, so a misplaced or repeated block changes the hash.
            digest.update(block)
            stream.write(block)
    return digest.hexdigest()


def prepare_share(share: pathlib.Path) -> str:
    (share / "hello.txt").write_bytes(HELLO)
    os.chmod(share / "hello.txt", 0o640)
    for directory in range(TREE_DIRS):
        folder = share / "tree" / f"d{directory:02d}"
        folder.mkdir(parents=True)
        for index in range(TREE_FILES_PER_DIR):
            (folder / f"f{index:03d}").write_bytes(tree_file_content(directory, index))
    return write_big_file(share / "big.bin")


@dataclasses.dataclass(frozen=True)
class MainBoot:
    result: runner.BootResult
    work: pathlib.Path
    big_sha256: str
    host_copy_sha256: str
    host_copy_kib: int


def run_main_workload(daemon_name: str, root: pathlib.Path, qemu: str = runner.QEMU) -> MainBoot:
    share = root / "share"
    share.mkdir()
    big_sha256 = prepare_share(share)
    script = runner.guest_script("main.sh", prelude=f"TREE_FILES={TREE_FILES}\n")
    try:
        result = runner.boot(daemon_name, share, script, timeout=BOOT_TIMEOUT, log_dir=root / "logs",
                             qemu=qemu)
        copy = share / "work" / "big.copy"
        copy_sha256 = image.file_sha256(copy) if copy.exists() else "missing"
        copy_kib = copy.stat().st_blocks * 512 // 1024 if copy.exists() else -1
    finally:
        # The 512 MiB of big files go at once; the small files stay for the host-side tests
        # and the logs for post-mortems.
        for big in (share / "big.bin", share / "work" / "big.copy"):
            big.unlink(missing_ok=True)
    return MainBoot(result, share / "work", big_sha256, copy_sha256, copy_kib)


@pytest.fixture
def main_boot(daemon_name: str, qemu_name: str, qemu_binary: str, boot_once,
              tmp_path_factory: pytest.TempPathFactory) -> MainBoot:
    """One boot of the main workload per daemon and QEMU version (7.2 and 10.0 send different
    vhost-user messages: 10.0 negotiates more protocol features)."""
    return boot_once(
        ("main", daemon_name, qemu_name),
        lambda: run_main_workload(daemon_name,
                                  tmp_path_factory.mktemp(f"main-{daemon_name}-{qemu_name}"),
                                  qemu_binary),
    )


def _guest_failure(result: runner.BootResult, detail: str) -> str:
    return f"{detail}\n--- guest console (tail) ---\n{result.console_tail(15)}"


@pytest.mark.parametrize("check_name", GUEST_CHECKS)
def test_guest_check(main_boot, check_name: str) -> None:
    result = main_boot.result
    check = result.check(check_name)
    assert check is not None, _guest_failure(
        result, f"the guest never reported {check_name!r} (did the workload die before it?)"
    )
    assert check.ok, f"guest check {check_name} failed: {check.detail}"


def test_every_guest_check_reported_once(main_boot) -> None:
    result = main_boot.result
    reported = [check.name for check in result.checks]
    assert sorted(reported) == sorted(GUEST_CHECKS), _guest_failure(result, "reported checks differ")


def test_guest_unmounted_and_powered_off(main_boot) -> None:
    result = main_boot.result
    assert result.markers() == [
        "GUEST-MOUNTED", "GUEST-WORKLOAD-EXIT 0", "GUEST-UNMOUNTED", "GUEST-POWEROFF"
    ], _guest_failure(result, "the guest did not mount, run, unmount and power off cleanly")


def test_daemon_logs_its_connection(main_boot) -> None:
    result = main_boot.result
    log = result.daemon_log.lower()
    assert re.search(r"waiting for .*connection", log), f"no 'waiting for connection':\n{result.daemon_log}"
    assert "client connected" in log, f"no 'client connected':\n{result.daemon_log}"


def test_daemon_exits_zero_when_qemu_goes_away(main_boot) -> None:
    result = main_boot.result
    assert result.daemon_returncode == 0, (
        f"daemon exit status {result.daemon_returncode} (None: still running "
        f"{runner.DAEMON_EXIT_SECONDS} s after QEMU exited)\n{runner.tail(result.daemon_log, 20)}"
    )


def test_host_big_copy_is_identical(main_boot) -> None:
    assert main_boot.host_copy_sha256 == main_boot.big_sha256, (
        "the guest's cp of big.bin differs from the original on the host "
        f"(host sha256 of the copy: {main_boot.host_copy_sha256})"
    )


def test_guest_reads_back_the_big_copy(main_boot) -> None:
    assert main_boot.result.values.get("big_copy_sha256") == main_boot.big_sha256, (
        "the guest's sha256 of big.copy after dropping its page cache differs from the host's"
    )


def test_guest_du_matches_host_blocks(main_boot) -> None:
    assert main_boot.result.values.get("du_big_kib") == str(main_boot.host_copy_kib)


def test_host_sees_echo_and_append(main_boot) -> None:
    work = main_boot.work
    assert (work / "notes.txt").read_bytes() == b"first\nsecond\n"
    assert (work / "overwritten.txt").read_bytes() == b"again\n"
    assert (work / "offset.txt").read_bytes() == b"012XY56789"


def test_host_sees_directories_created_and_removed(main_boot) -> None:
    work = main_boot.work
    assert (work / "a" / "b" / "c" / "d").is_dir()
    assert not (work / "doomed").exists()
    assert not (work / "empty_dir").exists()
    assert not (work / "unlinked.txt").exists()


def test_host_sees_renames(main_boot) -> None:
    work = main_boot.work
    assert (work / "mv_dst.txt").read_bytes() == b"moved\n"
    assert not (work / "mv_src.txt").exists()
    assert (work / "over_dst.txt").read_bytes() == b"new\n"
    assert not (work / "over_src.txt").exists()
    assert (work / "a" / "b" / "traveller.txt").read_bytes() == b"travel\n"
    assert (work / "dir_into" / "dir_dst" / "sub" / "f").read_bytes() == b"inside\n"
    assert not (work / "dir_src").exists() and not (work / "dir_dst").exists()
    assert (work / "dirover_dst" / "kept").is_dir() and not (work / "dirover_src").exists()
    assert (work / "full_src" / "x").is_dir() and (work / "full_dst" / "y").is_dir()


def test_host_sees_links(main_boot) -> None:
    work = main_boot.work
    target, hard = (work / "target.txt").stat(), (work / "hard.txt").stat()
    assert (target.st_ino, target.st_nlink) == (hard.st_ino, 2)
    assert os.readlink(work / "sym.txt") == "target.txt"
    assert os.readlink(work / "dangling") == "/nowhere/at/all"
    assert os.readlink(work / "dirlink") == "a/b"


def test_host_sees_modes_and_owners(main_boot) -> None:
    work = main_boot.work
    assert stat.S_IMODE((work / "mode.txt").stat().st_mode) == 0o751
    assert stat.S_IMODE((work / "private").stat().st_mode) == 0o700
    owned = (work / "owned.txt").stat()
    assert (owned.st_uid, owned.st_gid) == (1234, 2345)
    link = (work / "owned_link").lstat()
    assert (link.st_uid, link.st_gid) == (1234, 2345)


def test_host_sees_touch_d_mtimes(main_boot) -> None:
    work = main_boot.work
    assert (work / "dated.txt").stat().st_mtime == TOUCH_D_EPOCH
    assert (work / "notes.txt").stat().st_mtime == TOUCH_D_EPOCH


def test_host_sees_truncation(main_boot) -> None:
    work = main_boot.work
    assert (work / "trunc.txt").read_bytes() == b"0123"
    assert (work / "grown.txt").read_bytes() == bytes(1024 * 1024)


def test_host_sees_identical_untarred_tree(main_boot) -> None:
    work = main_boot.work
    untarred = work / "untar" / "tree"
    found = sorted(str(path.relative_to(untarred)) for path in untarred.rglob("*") if path.is_file())
    assert len(found) == TREE_FILES
    for directory in range(TREE_DIRS):
        for index in range(TREE_FILES_PER_DIR):
            path = untarred / f"d{directory:02d}" / f"f{index:03d}"
            assert path.read_bytes() == tree_file_content(directory, index), path


def test_host_sees_fifo(main_boot) -> None:
    work = main_boot.work
    assert stat.S_ISFIFO((work / "fifo").lstat().st_mode)


def test_host_sees_guest_user_as_owner(main_boot) -> None:
    work = main_boot.work
    home = work / "home"
    for name in ("mine.txt", "mydir", "mylink", "myfifo", "r2", "umask.txt"):
        info = (home / name).lstat()
        assert (info.st_uid, info.st_gid) == GUEST_USER, f"{name} is owned by {info.st_uid}:{info.st_gid}"
    assert (home / "mine.txt").read_bytes() == b"mine\n"
    assert os.readlink(home / "mylink") == "mine.txt"
    assert stat.S_IMODE((home / "umask.txt").stat().st_mode) == 0o640
    assert not (work / "denied.txt").exists()
    assert not (home / "r1").exists()
