#!/usr/bin/env python3
"""POSIX conformance checks run inside the guest against a virtio-fs mount.

Run with the host's Python (the guest chroots into the host's root shared over 9p):

    conformance.py --mount /mnt --label auto --cache auto --host-requests /path/on/host

Every check prints exactly one line in the format tests/guest/runner.parse_console reads:

    RESULT <label>.<check> ok|fail [expected X got Y]

and the list of check names (``--list``) is what tests/guest/test_conformance.py expects, so
a check that vanishes fails there.  Checks that need the host's point of view (files the host
changes, locks the host sees) ask the host through a line on stdout (``HOSTOP <id> <json>``,
the serial console in the guest); the host answers by writing ``<id>.json`` into the
``--host-requests`` folder, which the guest reads through the 9p host root.  Without
``--host-requests`` and with ``--host-share`` the same questions are answered in-process,
which is how the checks themselves are validated on a plain local folder.

Only the standard library is used, plus ctypes for calls the os module lacks (renameat2,
fallocate modes, utimensat with UTIME_OMIT, seekdir/telldir).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import mmap
import os
import pickle
import select
import stat
import struct
import sys
import time
import traceback

LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

GUEST_USER = 1000           # the image's "user" (tests/guest/image.py)
OTHER_USER = 1001           # a second ordinary user; needs no passwd entry to setuid to
FOREIGN_GROUP = 3000        # a group neither user belongs to

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
F_OFD_GETLK = 36
F_OFD_SETLK = 37
LOCK_WAIT_SECONDS = 0.6


class CheckFailed(Exception):
    """A check saw something other than what POSIX (and Linux) promise."""


def errno_name(number: int | None) -> str:
    if number is None:
        return "ok"
    return errno.errorcode.get(number, str(number))


def outcome(function, *args, **kwargs) -> tuple[int | None, object]:
    """(None, value) when the call succeeds, (errno, None) when it raises OSError."""
    try:
        return None, function(*args, **kwargs)
    except OSError as error:
        return error.errno, None


def expect_errno(expected: int | tuple[int, ...] | None, function, *args, **kwargs):
    """Runs a call that must fail with ``expected`` (None: must succeed); returns its value."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    got, value = outcome(function, *args, **kwargs)
    if got not in allowed:
        want = "|".join(errno_name(number) for number in allowed)
        raise CheckFailed(f"expected {want} got {errno_name(got)}")
    return value


def expect_equal(what: str, expected, got) -> None:
    if expected != got:
        raise CheckFailed(f"{what}: expected {expected!r} got {got!r}")


def expect_true(what: str, condition: bool) -> None:
    if not condition:
        raise CheckFailed(what)


def _libc_call(result: int, what: str) -> int:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def renameat2(old: str, new: str, flags: int) -> None:
    _libc_call(LIBC.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                              ctypes.c_uint(flags)), "renameat2")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _libc_call(LIBC.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)), "fallocate")


def link_fd(fd: int, target: str) -> None:
    """linkat(fd, "", AT_EMPTY_PATH): gives an O_TMPFILE a name without /proc (which the
    host-root chroot does not have); needs CAP_DAC_READ_SEARCH, which root has."""
    _libc_call(LIBC.linkat(fd, b"", AT_FDCWD, os.fsencode(target), AT_EMPTY_PATH), "linkat")


#: A FIFO pair the guest's shell serves outside the host-root chroot (test_conformance.py);
#: the chroot has no /proc of the guest.
DROP_CACHES_REQUEST = "/tmp/drop-caches.request"
DROP_CACHES_DONE = "/tmp/drop-caches.done"


def drop_caches() -> None:
    """sync and drop the guest's page, dentry and inode caches (so FORGETs reach the daemon)."""
    os.sync()
    if os.path.exists(DROP_CACHES_REQUEST):
        with open(DROP_CACHES_REQUEST, "w") as request:
            request.write("3\n")
        with open(DROP_CACHES_DONE) as done:
            done.readline()
        return
    with open("/proc/sys/vm/drop_caches", "w") as stream:
        stream.write("3")


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    _libc_call(LIBC.utimensat(AT_FDCWD, os.fsencode(path), times, 0), "utimensat")


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_uint16), ("d_type", ctypes.c_uint8),
                ("d_name", ctypes.c_char * 256)]


LIBC.opendir.restype = ctypes.c_void_p
LIBC.opendir.argtypes = [ctypes.c_char_p]
LIBC.readdir.restype = ctypes.POINTER(Dirent)
LIBC.readdir.argtypes = [ctypes.c_void_p]
LIBC.telldir.restype = ctypes.c_long
LIBC.telldir.argtypes = [ctypes.c_void_p]
LIBC.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
LIBC.rewinddir.argtypes = [ctypes.c_void_p]
LIBC.closedir.argtypes = [ctypes.c_void_p]


class LibcDir:
    """opendir/readdir/telldir/seekdir, which the os module does not expose."""

    def __init__(self, path: str) -> None:
        self.handle = LIBC.opendir(os.fsencode(path))
        if not self.handle:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), path)

    def read(self) -> tuple[bytes, int] | None:
        ctypes.set_errno(0)
        entry = LIBC.readdir(self.handle)
        if not entry:
            if ctypes.get_errno():
                raise OSError(ctypes.get_errno(), "readdir")
            return None
        return entry.contents.d_name, entry.contents.d_ino

    def tell(self) -> int:
        return LIBC.telldir(self.handle)

    def seek(self, position: int) -> None:
        LIBC.seekdir(self.handle, position)

    def rewind(self) -> None:
        LIBC.rewinddir(self.handle)

    def close(self) -> None:
        LIBC.closedir(self.handle)


def as_user(uid: int, gid: int, groups: list[int], function, *args):
    """Runs ``function(*args)`` in a child process with the given credentials and returns
    its value; an OSError in the child is raised again here with the same errno."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            answer = ("ok", function(*args))
        except OSError as error:
            answer = ("oserror", error.errno, str(error))
        except BaseException as error:  # reported to the parent, which fails the check
            answer = ("error", repr(error))
        with os.fdopen(write_end, "wb") as stream:
            pickle.dump(answer, stream)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        answer = pickle.load(stream)
    os.waitpid(pid, 0)
    if answer[0] == "oserror":
        raise OSError(answer[1], answer[2])
    if answer[0] == "error":
        raise CheckFailed(f"child failed: {answer[1]}")
    return answer[1]


def as_guest_user(function, *args):
    return as_user(GUEST_USER, GUEST_USER, [GUEST_USER], function, *args)


def as_other_user(function, *args):
    return as_user(OTHER_USER, OTHER_USER, [OTHER_USER], function, *args)


def create(path: str, data: bytes = b"", mode: int = 0o644) -> str:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def read_file(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def write_existing(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def file_mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class Child:
    """A forked helper process that runs one function; its result comes back through a pipe.

    Used by the lock checks, where the second lock owner must be another process.
    """

    def __init__(self, function, *args) -> None:
        self.read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.read_end)
            try:
                answer = ("ok", function(*args))
            except OSError as error:
                answer = ("oserror", error.errno)
            except BaseException as error:
                answer = ("error", repr(error))
            os.write(write_end, pickle.dumps(answer))
            os._exit(0)
        os.close(write_end)

    def done(self, timeout: float) -> bool:
        return bool(select.select([self.read_end], [], [], timeout)[0])

    def result(self, timeout: float = 10.0):
        if not self.done(timeout):
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
            raise CheckFailed(f"helper process did not finish within {timeout} s")
        data = b""
        while chunk := os.read(self.read_end, 65536):
            data += chunk
        os.close(self.read_end)
        os.waitpid(self.pid, 0)
        answer = pickle.loads(data)
        if answer[0] == "oserror":
            raise OSError(answer[1], os.strerror(answer[1]))
        if answer[0] == "error":
            raise CheckFailed(f"helper failed: {answer[1]}")
        return answer[1]


def lock_range(fd: int, kind: int, start: int = 0, length: int = 0, command: int = fcntl.F_SETLK):
    record = struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0)
    return fcntl.fcntl(fd, command, record)


def get_lock(fd: int, kind: int, start: int = 0, length: int = 0) -> tuple[int, int]:
    """F_GETLK: (type, pid) of a conflicting lock, type F_UNLCK when there is none."""
    record = struct.pack("hhqqi", kind, os.SEEK_SET, start, length, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, record)
    lock_type, _, _, _, pid = struct.unpack("hhqqi", answer)
    return lock_type, pid


# --------------------------------------------------------------------------------------------
# The host's side
# --------------------------------------------------------------------------------------------

def host_operation(share: str, request: dict) -> dict:
    """Carries out one request on the host's copy of the share (see tests/guest/host_agent.py,
    which runs the same function on the host while the guest runs)."""
    path = os.path.join(share, request["path"])
    operation = request["op"]
    try:
        if operation == "write":
            data = bytes.fromhex(request["data"])
            if request.get("in_place"):
                with open(path, "r+b") as stream:
                    stream.truncate(0)
                    stream.write(data)
            else:
                with open(path + ".host-tmp", "wb") as stream:
                    stream.write(data)
                os.rename(path + ".host-tmp", path)
            return {"ok": True}
        if operation == "read":
            return {"ok": True, "data": read_file(path).hex()}
        if operation == "unlink":
            os.unlink(path)
            return {"ok": True}
        if operation == "stat":
            info = os.lstat(path)
            return {"ok": True, "mode": info.st_mode, "uid": info.st_uid, "gid": info.st_gid,
                    "size": info.st_size}
        if operation == "ofd_getlk":
            fd = os.open(path, os.O_RDWR)
            try:
                record = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, request["start"],
                                     request["length"], 0)
                answer = fcntl.fcntl(fd, F_OFD_GETLK, record)
                lock_type, _, start, length, _ = struct.unpack("hhqqi", answer)
            finally:
                os.close(fd)
            return {"ok": True, "type": lock_type, "start": start, "length": length}
        if operation == "flock_probe":
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return {"ok": True, "locked": False}
            except BlockingIOError:
                return {"ok": True, "locked": True}
            finally:
                os.close(fd)
        return {"ok": False, "errno": errno.EINVAL, "error": f"unknown op {operation}"}
    except OSError as error:
        return {"ok": False, "errno": error.errno, "error": str(error)}


class Host:
    """Asks the host to look at or change the share; None when no host side was given."""

    def __init__(self, label: str, requests_dir: str | None, local_share: str | None) -> None:
        self.label = label
        self.requests_dir = requests_dir
        self.local_share = local_share
        self.counter = 0

    @property
    def available(self) -> bool:
        return bool(self.requests_dir or self.local_share)

    def __call__(self, operation: str, path: str, **fields) -> dict:
        request = {"op": operation, "path": path, **fields}
        if self.local_share:
            answer = host_operation(self.local_share, request)
        elif self.requests_dir:
            answer = self._remote(request)
        else:
            raise CheckFailed("no host side given (--host-requests or --host-share)")
        if not answer.get("ok"):
            raise OSError(answer.get("errno", errno.EIO), f"host {operation}: {answer.get('error')}")
        return answer

    def _remote(self, request: dict) -> dict:
        self.counter += 1
        request_id = f"{self.label}-{os.getpid()}-{self.counter}"
        print(f"HOSTOP {request_id} {self.label} {json.dumps(request)}", flush=True)
        reply = os.path.join(self.requests_dir, request_id + ".json")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with open(reply) as stream:
                    return json.load(stream)
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.02)
        raise CheckFailed(f"host did not answer {request_id} within 30 s")


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------

CHECKS: list[tuple[str, object]] = []


def check(function):
    CHECKS.append((function.__name__.removeprefix("check_"), function))
    return function


class Suite:
    def __init__(self, work: str, cache: str, host: Host, big_dir_entries: int,
                 other_mount: str | None) -> None:
        self.work = work
        self.cache = cache
        self.host = host
        self.big_dir_entries = big_dir_entries
        self.other_mount = other_mount
        self.host_work = os.path.basename(work)

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def fresh(self, name: str) -> str:
        """A new empty folder for one check, so checks never see each other's files."""
        folder = self.path(name)
        os.mkdir(folder, 0o777)
        os.chmod(folder, 0o777)
        return folder

    def fixture(self, name: str) -> str:
        """A folder the host filled before the run (prepare_fixtures)."""
        folder = os.path.join(os.path.dirname(self.work), FIXTURES, name)
        if not os.path.isdir(folder):
            raise CheckFailed(f"fixture {folder} missing (prepare_fixtures was not run)")
        return folder

    def host_path(self, guest_path: str) -> str:
        return os.path.relpath(guest_path, os.path.dirname(self.work))

    def settle(self) -> None:
        """Pushes cached writes to the daemon (needed under --writeback before asking the host)."""
        os.sync()


# --- creation and permissions -------------------------------------------------------------

@check
def check_open_creat_excl_existing(suite: Suite) -> None:
    path = create(suite.path("excl_existing"))
    expect_errno(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)


@check
def check_open_creat_excl_new(suite: Suite) -> None:
    path = suite.path("excl_new")
    os.close(expect_errno(None, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    expect_true("file exists after O_CREAT|O_EXCL", os.path.isfile(path))


@check
def check_open_creat_excl_dangling_symlink(suite: Suite) -> None:
    link = suite.path("excl_dangling")
    os.symlink("excl_dangling_target", link)
    expect_errno(errno.EEXIST, os.open, link, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    expect_true("target not created", not os.path.exists(suite.path("excl_dangling_target")))


@check
def check_open_trunc(suite: Suite) -> None:
    path = create(suite.path("trunc"), b"x" * 5000)
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC))
    expect_equal("size after O_TRUNC", 0, os.stat(path).st_size)
    expect_equal("content", b"", read_file(path))


@check
def check_open_append(suite: Suite) -> None:
    path = create(suite.path("append"), b"start:")
    first = os.open(path, os.O_WRONLY | os.O_APPEND)
    second = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(first, b"one;")
        os.write(second, b"two;")
        os.lseek(first, 0, os.SEEK_SET)
        os.write(first, b"three;")
    finally:
        os.close(first)
        os.close(second)
    expect_equal("content", b"start:one;two;three;", read_file(path))


@check
def check_open_nofollow_symlink(suite: Suite) -> None:
    create(suite.path("nofollow_target"))
    os.symlink("nofollow_target", suite.path("nofollow_link"))
    expect_errno(errno.ELOOP, os.open, suite.path("nofollow_link"), os.O_RDONLY | os.O_NOFOLLOW)


@check
def check_open_directory_on_file(suite: Suite) -> None:
    path = create(suite.path("not_a_dir"))
    expect_errno(errno.ENOTDIR, os.open, path, os.O_RDONLY | os.O_DIRECTORY)


@check
def check_open_directory_on_dir(suite: Suite) -> None:
    os.close(expect_errno(None, os.open, suite.work, os.O_RDONLY | os.O_DIRECTORY))


@check
def check_open_write_on_dir(suite: Suite) -> None:
    expect_errno(errno.EISDIR, os.open, suite.work, os.O_WRONLY)


@check
def check_open_missing(suite: Suite) -> None:
    expect_errno(errno.ENOENT, os.open, suite.path("missing"), os.O_RDONLY)


@check
def check_open_tmpfile(suite: Suite) -> None:
    folder = suite.fresh("tmpfile")
    fd = expect_errno(None, os.open, folder, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"anonymous")
        expect_equal("st_nlink of an O_TMPFILE", 0, os.fstat(fd).st_nlink)
        expect_equal("entries while unnamed", [], os.listdir(folder))
        link_fd(fd, os.path.join(folder, "named"))
    finally:
        os.close(fd)
    expect_equal("content after linkat", b"anonymous", read_file(os.path.join(folder, "named")))


@check
def check_mode_umask(suite: Suite) -> None:
    previous = os.umask(0o027)
    try:
        create(suite.path("umask_file"), mode=0o666)
        os.mkdir(suite.path("umask_dir"), 0o777)
        os.mkfifo(suite.path("umask_fifo"), 0o666)
    finally:
        os.umask(previous)
    expect_equal("file mode", 0o640, file_mode(suite.path("umask_file")))
    expect_equal("dir mode", 0o750, file_mode(suite.path("umask_dir")))
    expect_equal("fifo mode", 0o640, file_mode(suite.path("umask_fifo")))


@check
def check_mode_umask_zero(suite: Suite) -> None:
    previous = os.umask(0)
    try:
        create(suite.path("umask0_file"), mode=0o777)
    finally:
        os.umask(previous)
    expect_equal("file mode", 0o777, file_mode(suite.path("umask0_file")))


@check
def check_owner_of_new_nodes_for_user(suite: Suite) -> None:
    folder = suite.fresh("owned")

    def make() -> None:
        create(os.path.join(folder, "file"))
        os.mkdir(os.path.join(folder, "dir"))
        os.symlink("file", os.path.join(folder, "link"))
        os.mkfifo(os.path.join(folder, "fifo"))

    as_guest_user(make)
    for name in ("file", "dir", "link", "fifo"):
        info = os.lstat(os.path.join(folder, name))
        expect_equal(f"{name} owner", (GUEST_USER, GUEST_USER), (info.st_uid, info.st_gid))
    if suite.host.available:
        suite.settle()
        answer = suite.host("stat", suite.host_path(os.path.join(folder, "file")))
        expect_equal("owner on the host", (GUEST_USER, GUEST_USER), (answer["uid"], answer["gid"]))


@check
def check_user_cannot_write_root_file(suite: Suite) -> None:
    path = create(suite.path("root_only"), mode=0o644)
    os.chmod(path, 0o644)
    expect_errno(errno.EACCES, as_guest_user, os.open, path, os.O_WRONLY)


@check
def check_user_cannot_create_in_root_dir(suite: Suite) -> None:
    folder = suite.path("root_dir")
    os.mkdir(folder, 0o755)
    expect_errno(errno.EACCES, as_guest_user, create, os.path.join(folder, "f"))


@check
def check_setgid_dir_group_inheritance(suite: Suite) -> None:
    folder = suite.fresh("setgid")
    os.chown(folder, 0, FOREIGN_GROUP)
    os.chmod(folder, 0o2777)
    create(os.path.join(folder, "file"))
    os.mkdir(os.path.join(folder, "sub"))
    expect_equal("file group", FOREIGN_GROUP, os.stat(os.path.join(folder, "file")).st_gid)
    sub = os.stat(os.path.join(folder, "sub"))
    expect_equal("subdir group", FOREIGN_GROUP, sub.st_gid)
    expect_true("subdir inherits S_ISGID", bool(sub.st_mode & stat.S_ISGID))
    as_guest_user(create, os.path.join(folder, "user_file"))
    expect_equal("user's file group", FOREIGN_GROUP, os.stat(os.path.join(folder, "user_file")).st_gid)


@check
def check_setgid_dir_non_member_cve_2022_0358(suite: Suite) -> None:
    """A user outside the folder's group creates a setgid file there: the file gets the
    folder's group, so it must not keep S_ISGID (CVE-2022-0358 in virtiofsd)."""
    folder = suite.fresh("setgid_cve")
    os.chown(folder, 0, FOREIGN_GROUP)
    os.chmod(folder, 0o2777)
    path = os.path.join(folder, "escalate")
    previous = os.umask(0)
    try:
        as_guest_user(create, path, b"", 0o2755)
        as_guest_user(os.mkdir, os.path.join(folder, "subdir"), 0o2755)
    finally:
        os.umask(previous)
    info = os.stat(path)
    expect_equal("group", FOREIGN_GROUP, info.st_gid)
    expect_equal("mode (S_ISGID cleared)", 0o755, stat.S_IMODE(info.st_mode))
    if suite.host.available:
        answer = suite.host("stat", suite.host_path(path))
        expect_equal("mode on the host", 0o755, stat.S_IMODE(answer["mode"]))


@check
def check_sticky_dir(suite: Suite) -> None:
    folder = suite.fresh("sticky")
    os.chmod(folder, 0o1777)
    victim = os.path.join(folder, "users_file")
    as_guest_user(create, victim)
    expect_errno(errno.EPERM, as_other_user, os.unlink, victim)
    expect_errno(errno.EPERM, as_other_user, os.rename, victim, os.path.join(folder, "stolen"))
    as_guest_user(os.unlink, victim)
    expect_true("owner removed the file", not os.path.exists(victim))


@check
def check_chmod_by_non_owner(suite: Suite) -> None:
    path = as_guest_user(create, suite.path("chmod_target"))
    expect_errno(errno.EPERM, as_other_user, os.chmod, path, 0o777)
    as_guest_user(os.chmod, path, 0o600)
    expect_equal("mode after owner's chmod", 0o600, file_mode(path))


@check
def check_chown_rules(suite: Suite) -> None:
    path = as_guest_user(create, suite.path("chown_target"))
    expect_errno(errno.EPERM, as_guest_user, os.chown, path, OTHER_USER, -1)
    expect_errno(errno.EPERM, as_guest_user, os.chown, path, -1, FOREIGN_GROUP)
    as_user(GUEST_USER, GUEST_USER, [GUEST_USER, FOREIGN_GROUP], os.chown, path, -1, FOREIGN_GROUP)
    expect_equal("group after chgrp to a member group", FOREIGN_GROUP, os.stat(path).st_gid)
    os.chown(path, OTHER_USER, OTHER_USER)
    info = os.stat(path)
    expect_equal("owner after root's chown", (OTHER_USER, OTHER_USER), (info.st_uid, info.st_gid))


@check
def check_chmod_sgid_by_non_member_cleared(suite: Suite) -> None:
    path = as_guest_user(create, suite.path("chmod_sgid"))
    os.chown(path, GUEST_USER, FOREIGN_GROUP)
    as_guest_user(os.chmod, path, 0o2755)
    expect_equal("mode (S_ISGID dropped)", 0o755, file_mode(path))


def _privileged_file(suite: Suite, name: str, mode: int) -> str:
    path = create(suite.path(name), b"0123456789")
    os.chmod(path, mode)
    expect_equal("mode before", mode, file_mode(path))
    return path


@check
def check_suid_cleared_on_write_by_non_owner(suite: Suite) -> None:
    path = _privileged_file(suite, "suid_write", 0o6777)
    as_guest_user(write_existing, path, b"x")
    expect_equal("mode after write", 0o777, file_mode(path))


@check
def check_sgid_without_group_exec_kept_for_member(suite: Suite) -> None:
    """S_ISGID without g+x grants nothing, so a write by a member of the file's group keeps it."""
    path = _privileged_file(suite, "sgid_noexec_write", 0o2666)
    os.chown(path, 0, GUEST_USER)
    os.chmod(path, 0o2666)
    as_guest_user(write_existing, path, b"x")
    expect_equal("mode after write", 0o2666, file_mode(path))


@check
def check_suid_cleared_on_truncate_by_non_owner(suite: Suite) -> None:
    path = _privileged_file(suite, "suid_truncate", 0o6777)
    as_guest_user(os.truncate, path, 3)
    expect_equal("mode after truncate", 0o777, file_mode(path))
    expect_equal("size", 3, os.stat(path).st_size)


@check
def check_suid_cleared_on_ftruncate_by_non_owner(suite: Suite) -> None:
    path = _privileged_file(suite, "suid_ftruncate", 0o6777)

    def shorten() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, 2)
        finally:
            os.close(fd)

    as_guest_user(shorten)
    expect_equal("mode after ftruncate", 0o777, file_mode(path))


@check
def check_suid_cleared_on_chown(suite: Suite) -> None:
    path = as_guest_user(create, suite.path("suid_chown"))
    as_guest_user(os.chmod, path, 0o6755)
    as_user(GUEST_USER, GUEST_USER, [GUEST_USER, FOREIGN_GROUP], os.chown, path, -1, FOREIGN_GROUP)
    expect_equal("mode after chgrp by the owner", 0o755, file_mode(path))


@check
def check_suid_kept_on_write_by_root(suite: Suite) -> None:
    path = _privileged_file(suite, "suid_root_write", 0o6755)
    write_existing(path, b"x")
    expect_equal("mode after root's write (CAP_FSETID)", 0o6755, file_mode(path))


# --- names --------------------------------------------------------------------------------

@check
def check_name_255_bytes(suite: Suite) -> None:
    path = suite.path("n" * 255)
    create(path)
    expect_true("listed", "n" * 255 in os.listdir(suite.work))


@check
def check_name_256_bytes(suite: Suite) -> None:
    for operation in (lambda p: create(p), lambda p: os.mkdir(p), lambda p: os.stat(p),
                      lambda p: os.symlink("x", p)):
        expect_errno(errno.ENAMETOOLONG, operation, suite.path("m" * 256))


@check
def check_name_every_byte_value(suite: Suite) -> None:
    folder = suite.fresh("bytes")
    folder_bytes = os.fsencode(folder)
    expected = set()
    for value in range(1, 256):
        if value == ord("/"):
            continue
        name = b"b" + bytes([value]) + b"e"
        os.mknod(folder_bytes + b"/" + name, stat.S_IFREG | 0o644)
        expected.add(name)
        if value != ord("."):
            single = bytes([value])
            os.mknod(folder_bytes + b"/" + single, stat.S_IFREG | 0o644)
            expected.add(single)
    samples = (1, 10, 127, 128, 255)
    for value in samples:
        write_existing(os.fsdecode(folder_bytes + b"/b" + bytes([value]) + b"e"), bytes([value]))
    listed = set(os.listdir(folder_bytes))
    expect_equal("missing names", set(), expected - listed)
    expect_equal("unexpected names", set(), listed - expected)
    for value in samples:
        name = b"b" + bytes([value]) + b"e"
        expect_equal(f"content of byte {value}", bytes([value]), read_file(folder_bytes + b"/" + name))


@check
def check_symlink_loop(suite: Suite) -> None:
    os.symlink("loop_b", suite.path("loop_a"))
    os.symlink("loop_a", suite.path("loop_b"))
    os.symlink("loop_self", suite.path("loop_self"))
    expect_errno(errno.ELOOP, os.stat, suite.path("loop_a"))
    expect_errno(errno.ELOOP, os.open, suite.path("loop_self"), os.O_RDONLY)
    expect_equal("readlink", "loop_b", os.readlink(suite.path("loop_a")))


@check
def check_rename_missing_source(suite: Suite) -> None:
    expect_errno(errno.ENOENT, os.rename, suite.path("rename_nothing"), suite.path("rename_x"))


@check
def check_rename_dir_over_file(suite: Suite) -> None:
    os.mkdir(suite.path("rename_dir1"))
    create(suite.path("rename_file1"))
    expect_errno(errno.ENOTDIR, os.rename, suite.path("rename_dir1"), suite.path("rename_file1"))


@check
def check_rename_file_over_dir(suite: Suite) -> None:
    os.mkdir(suite.path("rename_dir2"))
    create(suite.path("rename_file2"))
    expect_errno(errno.EISDIR, os.rename, suite.path("rename_file2"), suite.path("rename_dir2"))


@check
def check_rename_over_non_empty_dir(suite: Suite) -> None:
    os.mkdir(suite.path("rename_src3"))
    os.makedirs(suite.path("rename_dst3", "inside"))
    expect_errno((errno.ENOTEMPTY, errno.EEXIST), os.rename, suite.path("rename_src3"),
                 suite.path("rename_dst3"))


@check
def check_rename_over_empty_dir(suite: Suite) -> None:
    os.makedirs(suite.path("rename_src4", "kept"))
    os.mkdir(suite.path("rename_dst4"))
    os.rename(suite.path("rename_src4"), suite.path("rename_dst4"))
    expect_true("moved", os.path.isdir(suite.path("rename_dst4", "kept")))


@check
def check_rename_file_over_file(suite: Suite) -> None:
    create(suite.path("rename_src5"), b"new")
    create(suite.path("rename_dst5"), b"old")
    inode = os.stat(suite.path("rename_src5")).st_ino
    os.rename(suite.path("rename_src5"), suite.path("rename_dst5"))
    expect_equal("content", b"new", read_file(suite.path("rename_dst5")))
    expect_equal("inode", inode, os.stat(suite.path("rename_dst5")).st_ino)
    expect_errno(errno.ENOENT, os.stat, suite.path("rename_src5"))


@check
def check_rename_to_itself(suite: Suite) -> None:
    create(suite.path("rename_self"), b"same")
    os.link(suite.path("rename_self"), suite.path("rename_self_link"))
    os.rename(suite.path("rename_self"), suite.path("rename_self"))
    os.rename(suite.path("rename_self"), suite.path("rename_self_link"))
    expect_true("both hard links remain (rename between links of one inode is a no-op)",
                os.path.exists(suite.path("rename_self")) and os.path.exists(suite.path("rename_self_link")))


@check
def check_rename_across_mounts(suite: Suite) -> None:
    path = create(suite.path("rename_xdev"))
    expect_errno(errno.EXDEV, os.rename, path, "/tmp/rename_xdev")
    if suite.other_mount:
        expect_errno(errno.EXDEV, os.rename, path, os.path.join(suite.other_mount, "rename_xdev"))


@check
def check_rename_dir_into_own_child(suite: Suite) -> None:
    os.makedirs(suite.path("parent6", "child"))
    expect_errno(errno.EINVAL, os.rename, suite.path("parent6"), suite.path("parent6", "child", "x"))
    expect_errno(errno.EINVAL, os.rename, suite.path("parent6"), suite.path("parent6", "x"))


@check
def check_rename_dot_entries(suite: Suite) -> None:
    os.makedirs(suite.path("dots7", "sub"))
    expect_errno((errno.EBUSY, errno.EINVAL), os.rename, suite.path("dots7", "sub", "."), suite.path("dots7", "y"))
    expect_errno((errno.EBUSY, errno.EINVAL, errno.ENOTEMPTY), os.rename, suite.path("dots7", "y"),
                 suite.path("dots7", "sub", ".."))


@check
def check_rename_noreplace(suite: Suite) -> None:
    create(suite.path("noreplace_a"), b"a")
    create(suite.path("noreplace_b"), b"b")
    expect_errno(errno.EEXIST, renameat2, suite.path("noreplace_a"), suite.path("noreplace_b"),
                 RENAME_NOREPLACE)
    expect_equal("target untouched", b"b", read_file(suite.path("noreplace_b")))
    renameat2(suite.path("noreplace_a"), suite.path("noreplace_c"), RENAME_NOREPLACE)
    expect_equal("renamed", b"a", read_file(suite.path("noreplace_c")))


@check
def check_rename_exchange(suite: Suite) -> None:
    create(suite.path("exchange_a"), b"a")
    os.mkdir(suite.path("exchange_b"))
    renameat2(suite.path("exchange_a"), suite.path("exchange_b"), RENAME_EXCHANGE)
    expect_true("a is now the folder", os.path.isdir(suite.path("exchange_a")))
    expect_equal("b is now the file", b"a", read_file(suite.path("exchange_b")))
    expect_errno(errno.ENOENT, renameat2, suite.path("exchange_b"), suite.path("exchange_none"),
                 RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, renameat2, suite.path("exchange_a"), suite.path("exchange_b"),
                 RENAME_EXCHANGE | RENAME_NOREPLACE)


@check
def check_hard_link_counts(suite: Suite) -> None:
    path = create(suite.path("links"))
    expect_equal("new file", 1, os.stat(path).st_nlink)
    os.link(path, suite.path("links2"))
    os.link(path, suite.path("links3"))
    expect_equal("after two links", 3, os.stat(path).st_nlink)
    os.unlink(suite.path("links2"))
    expect_equal("after an unlink", 2, os.stat(suite.path("links3")).st_nlink)
    folder = suite.path("links_dir")
    os.mkdir(folder)
    expect_equal("new folder", 2, os.stat(folder).st_nlink)
    os.mkdir(os.path.join(folder, "a"))
    os.mkdir(os.path.join(folder, "b"))
    expect_equal("folder with two subfolders", 4, os.stat(folder).st_nlink)
    expect_errno(errno.EPERM, os.link, folder, suite.path("links_dir2"))
    expect_errno(errno.EEXIST, os.link, path, suite.path("links3"))


@check
def check_unlink_and_rmdir_errors(suite: Suite) -> None:
    os.makedirs(suite.path("rm_full", "x"))
    create(suite.path("rm_file"))
    expect_errno(errno.ENOTEMPTY, os.rmdir, suite.path("rm_full"))
    expect_errno(errno.ENOTDIR, os.rmdir, suite.path("rm_file"))
    expect_errno(errno.EISDIR, os.unlink, suite.path("rm_full"))
    expect_errno(errno.ENOENT, os.unlink, suite.path("rm_missing"))
    expect_errno(errno.EEXIST, os.mkdir, suite.path("rm_full"))
    expect_errno(errno.ENOTDIR, os.stat, suite.path("rm_file", "below"))


@check
def check_unlink_open_file(suite: Suite) -> None:
    path = suite.path("unlinked_open")
    size = 32 * 1024 * 1024
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        block = b"u" * (1024 * 1024)
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
        free_with_file = os.statvfs(suite.work)
        os.unlink(path)
        expect_errno(errno.ENOENT, os.stat, path)
        expect_equal("pread after unlink", b"uuuu", os.pread(fd, 4, 1000))
        os.pwrite(fd, b"after", size)
        expect_equal("pread of new data", b"after", os.pread(fd, 5, size))
        info = os.fstat(fd)
        expect_equal("fstat nlink", 0, info.st_nlink)
        expect_equal("fstat size", size + 5, info.st_size)
    finally:
        os.close(fd)
    block_size = free_with_file.f_frsize
    deadline = time.monotonic() + 5
    while True:
        freed = (os.statvfs(suite.work).f_bfree - free_with_file.f_bfree) * block_size
        if freed >= size // 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect_true(f"space freed on close ({freed} of {size} bytes seen)", freed >= size // 2)


# --- data ---------------------------------------------------------------------------------

@check
def check_sparse_seek_data_hole(suite: Suite) -> None:
    path = suite.path("sparse")
    mib = 1024 * 1024
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"d" * 4096, 0)
        os.pwrite(fd, b"d" * 4096, 8 * mib)
        os.ftruncate(fd, 16 * mib)
        os.fsync(fd)
        expect_equal("SEEK_DATA from 0", 0, os.lseek(fd, 0, os.SEEK_DATA))
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
        expect_true(f"first hole at {hole}, expected within [4096, 8 MiB]", 4096 <= hole <= 8 * mib)
        expect_equal("SEEK_DATA into the hole", 8 * mib, os.lseek(fd, mib, os.SEEK_DATA))
        hole = os.lseek(fd, 8 * mib, os.SEEK_HOLE)
        expect_true(f"hole after the last data at {hole}", 8 * mib + 4096 <= hole <= 16 * mib)
        expect_errno(errno.ENXIO, os.lseek, fd, 12 * mib, os.SEEK_DATA)
        expect_errno(errno.ENXIO, os.lseek, fd, 17 * mib, os.SEEK_HOLE)
        expect_equal("hole reads zeros", b"\0" * 16, os.pread(fd, 16, 4 * mib))
        blocks = os.fstat(fd).st_blocks * 512
        expect_true(f"allocated {blocks} bytes for a 16 MiB sparse file", blocks < 4 * mib)
    finally:
        os.close(fd)


def _allocated(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


@check
def check_fallocate_default(suite: Suite) -> None:
    fd = os.open(suite.path("falloc_default"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fallocate(fd, 0, 0, 1024 * 1024)
        expect_equal("size", 1024 * 1024, os.fstat(fd).st_size)
        expect_true("blocks allocated", _allocated(fd) >= 1024 * 1024)
    finally:
        os.close(fd)


@check
def check_fallocate_keep_size(suite: Suite) -> None:
    fd = os.open(suite.path("falloc_keep"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"k" * 100)
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1024 * 1024)
        expect_equal("size", 100, os.fstat(fd).st_size)
        expect_true(f"blocks allocated ({_allocated(fd)})", _allocated(fd) >= 1024 * 1024)
    finally:
        os.close(fd)


@check
def check_fallocate_punch_hole(suite: Suite) -> None:
    fd = os.open(suite.path("falloc_punch"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"p" * (1024 * 1024))
        os.fsync(fd)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 * 1024, 256 * 1024)
        expect_equal("size", 1024 * 1024, os.fstat(fd).st_size)
        expect_equal("punched range reads zeros", b"\0" * (256 * 1024), os.pread(fd, 256 * 1024, 256 * 1024))
        expect_equal("data after the hole", b"p" * 16, os.pread(fd, 16, 512 * 1024))
        expect_equal("data before the hole", b"p" * 16, os.pread(fd, 16, 256 * 1024 - 16))
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096)
    finally:
        os.close(fd)


@check
def check_fallocate_zero_range(suite: Suite) -> None:
    """ZERO_RANGE: the range must read back as zeros.  Linux's FUSE client long refused the
    mode itself (EOPNOTSUPP, recorded as a NOTE, when only the guest kernel is tested); Debian's
    6.1.192 forwards it, and the daemon's fallocate(FALLOC_FL_ZERO_RANGE) does the work.  The
    daemon's side, KEEP_SIZE included, is also proven through the front-end
    (tests/core_tests/test_daemon_opcodes.py, test_fallocate_zero_range_and_punch_hole_...)."""
    fd = os.open(suite.path("falloc_zero"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"z" * 65536)
        got, _ = outcome(fallocate, fd, FALLOC_FL_ZERO_RANGE, 4096, 4096)
        if got == errno.EOPNOTSUPP:
            print(f"NOTE {suite.host.label}.fallocate_zero_range: EOPNOTSUPP, refused by the guest "
                  f"kernel (Linux {os.uname().release})", flush=True)
            return
        expect_equal("zero range errno", None, got)
        expect_equal("zeroed", b"\0" * 4096, os.pread(fd, 4096, 4096))
        expect_equal("after", b"z" * 8, os.pread(fd, 8, 8192))
    finally:
        os.close(fd)


@check
def check_copy_file_range(suite: Suite) -> None:
    source = create(suite.path("cfr_src"), bytes(range(256)) * 4096)
    fd_in = os.open(source, os.O_RDONLY)
    fd_out = os.open(suite.path("cfr_dst"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        copied = 0
        while copied < 1024 * 1024:
            count = os.copy_file_range(fd_in, fd_out, 1024 * 1024 - copied, copied, 4096 + copied)
            expect_true("copy_file_range made progress", count > 0)
            copied += count
        expect_equal("copied bytes", bytes(range(256)) * 4096, os.pread(fd_out, 1024 * 1024, 4096))
        expect_equal("gap before the copy", b"\0" * 4096, os.pread(fd_out, 4096, 0))
        expect_equal("size", 4096 + 1024 * 1024, os.fstat(fd_out).st_size)
        expect_errno(errno.EBADF, os.copy_file_range, fd_out, fd_in, 10)
    finally:
        os.close(fd_in)
        os.close(fd_out)


@check
def check_o_direct(suite: Suite) -> None:
    """Aligned O_DIRECT I/O must round-trip; unaligned I/O may be refused with EINVAL
    (FUSE itself accepts any alignment) but must never return wrong data."""
    path = suite.path("direct")
    fd = expect_errno(None, os.open, path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        buffer = mmap.mmap(-1, 8192)
        buffer.write(bytes(range(256)) * 32)
        expect_equal("aligned write", 8192, os.pwritev(fd, [buffer], 0))
        readback = mmap.mmap(-1, 8192)
        expect_equal("aligned read", 8192, os.preadv(fd, [readback], 0))
        expect_equal("aligned data", bytes(range(256)) * 32, bytes(readback))
        got, count = outcome(os.pwrite, fd, b"odd", 5)
        expect_true(f"unaligned write: {errno_name(got)}", got in (None, errno.EINVAL))
        if got is None:
            expect_equal("unaligned read", b"\x04odd\x08", os.pread(fd, 5, 4))
    finally:
        os.close(fd)
    expect_equal("size seen without O_DIRECT", 8192, os.stat(path).st_size)


@check
def check_fsync_fdatasync(suite: Suite) -> None:
    fd = os.open(suite.path("sync"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    directory = os.open(suite.work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    if suite.host.available:
        answer = suite.host("read", suite.host_path(suite.path("sync")))
        expect_equal("host sees the data after fsync", b"durable".hex(), answer["data"])


@check
def check_writer_and_reader_fds(suite: Suite) -> None:
    path = suite.path("two_fds")
    writer = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    reader = os.open(path, os.O_RDONLY)
    try:
        for round_number in range(20):
            piece = f"round{round_number:02d};".encode()
            os.write(writer, piece)
            expect_equal(f"round {round_number}", piece, os.read(reader, 100))
        expect_equal("reader at EOF", b"", os.read(reader, 100))
    finally:
        os.close(writer)
        os.close(reader)


@check
def check_truncate_while_open(suite: Suite) -> None:
    path = create(suite.path("shrinking"), b"t" * 100000)
    fd = os.open(path, os.O_RDWR)
    try:
        expect_equal("first read", b"t" * 10, os.read(fd, 10))
        os.truncate(path, 20)
        expect_equal("fstat after truncate by path", 20, os.fstat(fd).st_size)
        expect_equal("read to the new end", b"t" * 10, os.read(fd, 1000))
        expect_equal("read beyond the end", b"", os.pread(fd, 10, 50000))
        os.ftruncate(fd, 30)
        expect_equal("grown part reads zeros", b"t" * 20 + b"\0" * 10, os.pread(fd, 100, 0))
    finally:
        os.close(fd)


@check
def check_mmap_shared(suite: Suite) -> None:
    """MAP_SHARED writes show through read() and, after msync, on the host.  With
    --cache never the guest opens files with direct I/O, where Linux (before 6.6's
    DIRECT_IO_ALLOW_MMAP) refuses shared writable mappings with ENODEV: there this checks the
    guest kernel only.  --allow-mmap with --cache never is proven in a Linux 6.12 guest by
    tests/guest/test_multiqueue.py."""
    path = create(suite.path("mapped"), b"\0" * 8192)
    fd = os.open(path, os.O_RDWR)
    try:
        got, mapping = outcome(mmap.mmap, fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if suite.cache == "never":
            expect_equal("mmap MAP_SHARED with --cache never", errno.ENODEV, got)
            return
        expect_equal("mmap MAP_SHARED", None, got)
        mapping[100:110] = b"via-mmap!!"
        reader = os.open(path, os.O_RDONLY)
        try:
            expect_equal("read() sees the mapping", b"via-mmap!!", os.pread(reader, 10, 100))
        finally:
            os.close(reader)
        mapping.flush()
        mapping.close()
    finally:
        os.close(fd)
    if suite.host.available:
        answer = suite.host("read", suite.host_path(path))
        expect_equal("host sees the mapped write", b"via-mmap!!".hex(), answer["data"][200:220])


@check
def check_offsets_beyond_4gib(suite: Suite) -> None:
    path = suite.path("huge_offset")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    offsets = (4 * 1024 ** 3 - 2, 5 * 1024 ** 3, 1 << 40)
    try:
        for offset in offsets:
            os.pwrite(fd, b"far" + offset.to_bytes(8, "little"), offset)
        for offset in offsets:
            expect_equal(f"read at {offset}", b"far" + offset.to_bytes(8, "little"), os.pread(fd, 11, offset))
        expect_equal("size", (1 << 40) + 11, os.fstat(fd).st_size)
        expect_equal("lseek SEEK_END", (1 << 40) + 11, os.lseek(fd, 0, os.SEEK_END))
    finally:
        os.close(fd)
    expect_equal("stat size", (1 << 40) + 11, os.stat(path).st_size)
    os.truncate(path, 5 * 1024 ** 3 + 1)
    expect_equal("truncated size", 5 * 1024 ** 3 + 1, os.stat(path).st_size)
    os.unlink(path)


@check
def check_utimensat_now(suite: Suite) -> None:
    path = create(suite.path("times_now"))
    os.utime(path, ns=(10 ** 9, 2 * 10 ** 9))
    before = time.time()
    utimensat(path, (0, UTIME_NOW), (0, UTIME_NOW))
    info = os.stat(path)
    for name, value in (("atime", info.st_atime), ("mtime", info.st_mtime)):
        expect_true(f"{name} {value:.0f} near now {before:.0f}", abs(value - before) < 120)


@check
def check_utimensat_omit(suite: Suite) -> None:
    path = create(suite.path("times_omit"))
    os.utime(path, ns=(1_000_000_001, 2_000_000_002))
    utimensat(path, (3, 3), (0, UTIME_OMIT))
    info = os.stat(path)
    expect_equal("atime set", 3 * 10 ** 9 + 3, info.st_atime_ns)
    expect_equal("mtime omitted", 2_000_000_002, info.st_mtime_ns)
    utimensat(path, (0, UTIME_OMIT), (4, 4))
    info = os.stat(path)
    expect_equal("atime omitted", 3 * 10 ** 9 + 3, info.st_atime_ns)
    expect_equal("mtime set", 4 * 10 ** 9 + 4, info.st_mtime_ns)


@check
def check_timestamps_nanoseconds(suite: Suite) -> None:
    path = create(suite.path("times_ns"))
    os.utime(path, ns=(1_234_567_890_123_456_789, 1_700_000_000_987_654_321))
    info = os.stat(path)
    expect_equal("atime ns", 1_234_567_890_123_456_789, info.st_atime_ns)
    expect_equal("mtime ns", 1_700_000_000_987_654_321, info.st_mtime_ns)
    expect_errno(errno.EPERM, as_other_user, lambda: os.utime(path, ns=(1, 1)))
    expect_errno(errno.EACCES, as_other_user, os.utime, path)


@check
def check_write_updates_mtime_ctime(suite: Suite) -> None:
    path = create(suite.path("times_write"))
    os.utime(path, ns=(10 ** 9, 10 ** 9))
    ctime_before = os.stat(path).st_ctime_ns
    time.sleep(0.01)
    write_existing(path, b"changed")
    os.sync()
    info = os.stat(path)
    expect_true(f"mtime advanced ({info.st_mtime_ns})", info.st_mtime_ns > 10 ** 9)
    expect_true("ctime advanced", info.st_ctime_ns > ctime_before)


@check
def check_atime_relatime(suite: Suite) -> None:
    """relatime: a read updates an atime older than mtime (on the host's mount)."""
    path = create(suite.path("times_atime"), b"read me")
    os.utime(path, ns=(10 ** 9, 2 * 10 ** 9))
    drop_caches()
    read_file(path)
    deadline = time.monotonic() + 3
    while os.stat(path).st_atime_ns <= 2 * 10 ** 9 and time.monotonic() < deadline:
        time.sleep(0.2)
    expect_true(f"atime {os.stat(path).st_atime_ns} after a read, mtime 2e9",
                os.stat(path).st_atime_ns > 2 * 10 ** 9)


# --- folders ------------------------------------------------------------------------------

FIXTURES = "conformance-fixtures"
CHURN_STABLE = 1200
CHURN_DOOMED = 300
SEEKDIR_ENTRIES = 300


def prepare_fixtures(share: str, big_dir_entries: int) -> None:
    """Creates, on the host side of the share, the big folders the folder checks read, so the
    guest spends its (emulated, slow) time reading them rather than creating them."""
    def fill(folder: str, names) -> None:
        os.makedirs(folder, exist_ok=True)
        for name in names:
            os.mknod(os.path.join(folder, name), stat.S_IFREG | 0o644)

    root = os.path.join(share, FIXTURES)
    fill(os.path.join(root, "large"), (f"entry{index:05d}" for index in range(big_dir_entries)))
    fill(os.path.join(root, "churn"), [f"stable{index:04d}" for index in range(CHURN_STABLE)]
         + [f"doomed{index:04d}" for index in range(CHURN_DOOMED)])
    fill(os.path.join(root, "seekdir"), (f"s{index:03d}" for index in range(SEEKDIR_ENTRIES)))


@check
def check_readdir_large(suite: Suite) -> None:
    folder = suite.fixture("large")
    count = suite.big_dir_entries
    names = {f"entry{index:05d}" for index in range(count)}
    listed = os.listdir(folder)
    expect_equal("entries listed", count, len(listed))
    expect_equal("duplicates", 0, len(listed) - len(set(listed)))
    expect_equal("names", names, set(listed))
    with os.scandir(folder) as entries:
        types = {entry.is_file(follow_symlinks=False) for entry in entries}
    expect_equal("d_type of every entry", {True}, types)


@check
def check_readdir_while_changing(suite: Suite) -> None:
    folder = suite.fixture("churn")
    stable = {f"stable{index:04d}" for index in range(CHURN_STABLE)}
    doomed = {f"doomed{index:04d}" for index in range(CHURN_DOOMED)}
    seen: list[str] = []
    with os.scandir(folder) as entries:
        for index, entry in enumerate(entries):
            seen.append(entry.name)
            if index == 100:
                for name in doomed:
                    os.unlink(os.path.join(folder, name))
                for number in range(CHURN_DOOMED):
                    os.mknod(os.path.join(folder, f"added{number:04d}"), stat.S_IFREG | 0o644)
    duplicates = sorted({name for name in seen if seen.count(name) > 1}) if len(seen) != len(set(seen)) else []
    expect_equal("duplicates", [], duplicates[:5])
    missing = sorted(stable - set(seen))
    expect_equal("untouched entries missed", [], missing[:5])
    stray = sorted(name for name in seen if not name.startswith(("stable", "doomed", "added")))
    expect_equal("unknown names", [], stray)


@check
def check_seekdir_telldir(suite: Suite) -> None:
    folder = suite.fixture("seekdir")
    directory = LibcDir(folder)
    try:
        positions = []
        while True:
            position = directory.tell()
            entry = directory.read()
            if entry is None:
                break
            positions.append((position, entry[0]))
        expect_equal("entries including . and ..", SEEKDIR_ENTRIES + 2, len(positions))
        for position, name in (positions[7], positions[150], positions[299], positions[1]):
            directory.seek(position)
            expect_equal(f"entry after seekdir({position})", name, directory.read()[0])
        directory.rewind()
        expect_equal("first entry after rewinddir", positions[0][1], directory.read()[0])
    finally:
        directory.close()


@check
def check_dot_and_dotdot(suite: Suite) -> None:
    folder = suite.fresh("dots")
    os.mkdir(os.path.join(folder, "child"))
    directory = LibcDir(folder)
    try:
        names = {}
        while (entry := directory.read()) is not None:
            names[entry[0]] = entry[1]
    finally:
        directory.close()
    expect_equal("readdir names", {b".", b"..", b"child"}, set(names))
    expect_equal("'.' inode in readdir", os.stat(folder).st_ino, names[b"."])
    expect_equal("stat of child/..", os.stat(folder).st_ino,
                 os.stat(os.path.join(folder, "child", "..")).st_ino)
    expect_equal("stat of .", os.stat(folder).st_ino, os.stat(os.path.join(folder, ".")).st_ino)
    expect_equal("stat of the mount's ..", os.stat(os.path.dirname(os.path.dirname(suite.work)) or "/").st_ino,
                 os.stat(os.path.join(os.path.dirname(suite.work), "..")).st_ino)
    expect_errno(errno.EINVAL, os.rmdir, os.path.join(folder, "."))
    expect_errno((errno.ENOTEMPTY, errno.EBUSY), os.rmdir, os.path.join(folder, "child", ".."))


# --- coherence with the host --------------------------------------------------------------

def _wait_for(probe, seconds: float) -> float | None:
    """Seconds until ``probe()`` is true, None if it never was within ``seconds``."""
    started = time.monotonic()
    while True:
        if probe():
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            return None
        time.sleep(0.05)


def _coherence_verdict(suite: Suite, what: str, delay: float | None) -> None:
    """never: at once; auto: within the 1 s timeout (plus a margin); always: recorded only."""
    if suite.cache == "always":
        print(f"NOTE {suite.host.label}.coherence {what}: "
              f"{'seen after %.2f s' % delay if delay is not None else 'not seen within 3 s'}", flush=True)
        return
    limit = 0.3 if suite.cache in ("never", "none") else 2.5
    expect_true(f"{what}: {'seen after %.2f s' % delay if delay is not None else 'never seen'}, "
                f"limit {limit} s with --cache {suite.cache}", delay is not None and delay <= limit)


def _host_required(suite: Suite) -> None:
    if not suite.host.available:
        raise CheckFailed("needs the host side (--host-requests or --host-share)")


@check
def check_coherence_host_changes_file(suite: Suite) -> None:
    _host_required(suite)
    path = create(suite.path("coherent"), b"guest version")
    expect_equal("first read", b"guest version", read_file(path))
    suite.settle()
    suite.host("write", suite.host_path(path), data=b"host version!".hex(), in_place=True)
    delay = _wait_for(lambda: read_file(path) == b"host version!", 3.0)
    _coherence_verdict(suite, "in-place host write", delay)


@check
def check_coherence_host_replaces_file(suite: Suite) -> None:
    _host_required(suite)
    path = create(suite.path("replaced"), b"old")
    expect_equal("first read", b"old", read_file(path))
    suite.settle()
    suite.host("write", suite.host_path(path), data=b"replacement".hex())
    delay = _wait_for(lambda: outcome(read_file, path)[1] == b"replacement", 3.0)
    _coherence_verdict(suite, "host rename over the file", delay)


@check
def check_coherence_host_creates_and_removes(suite: Suite) -> None:
    _host_required(suite)
    path = suite.path("host_made")
    expect_errno(errno.ENOENT, os.stat, path)
    suite.host("write", suite.host_path(path), data=b"new".hex())
    created = _wait_for(lambda: os.path.exists(path), 3.0)
    _coherence_verdict(suite, "host-created file", created)
    suite.host("unlink", suite.host_path(path))
    removed = _wait_for(lambda: not os.path.exists(path), 3.0)
    _coherence_verdict(suite, "host-removed file", removed)


@check
def check_coherence_guest_write_seen_by_host(suite: Suite) -> None:
    _host_required(suite)
    path = create(suite.path("for_host"), b"from the guest")
    suite.settle()
    answer = suite.host("read", suite.host_path(path))
    expect_equal("host content", b"from the guest".hex(), answer["data"])


# --- locks --------------------------------------------------------------------------------

def _child_try_lock(path: str, kind: int, start: int, length: int):
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, kind, start, length)
        return "locked"
    finally:
        os.close(fd)


def _child_getlk(path: str, start: int, length: int):
    fd = os.open(path, os.O_RDWR)
    try:
        return get_lock(fd, fcntl.F_WRLCK, start, length)
    finally:
        os.close(fd)


@check
def check_posix_lock_conflict(suite: Suite) -> None:
    path = create(suite.path("posix_lock"), b"l" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_WRLCK, 0, 10)
        expect_errno((errno.EAGAIN, errno.EACCES), Child(_child_try_lock, path, fcntl.F_WRLCK, 5, 10).result)
        expect_equal("lock on a free range", "locked", Child(_child_try_lock, path, fcntl.F_WRLCK, 10, 10).result())
        lock_type, pid = Child(_child_getlk, path, 0, 100).result()
        expect_equal("F_GETLK type and pid", (fcntl.F_WRLCK, os.getpid()), (lock_type, pid))
        lock_range(fd, fcntl.F_UNLCK, 0, 10)
        expect_equal("lock after unlock", "locked", Child(_child_try_lock, path, fcntl.F_WRLCK, 5, 10).result())
    finally:
        os.close(fd)


@check
def check_posix_read_locks_share(suite: Suite) -> None:
    path = create(suite.path("posix_shared"), b"r" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_RDLCK, 0, 0)
        expect_equal("second read lock", "locked", Child(_child_try_lock, path, fcntl.F_RDLCK, 0, 0).result())
        expect_errno((errno.EAGAIN, errno.EACCES), Child(_child_try_lock, path, fcntl.F_WRLCK, 0, 0).result)
    finally:
        os.close(fd)


def _child_wait_lock(path: str) -> float:
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.monotonic()
        lock_range(fd, fcntl.F_WRLCK, 0, 0, fcntl.F_SETLKW)
        return time.monotonic() - started
    finally:
        os.close(fd)


@check
def check_posix_setlkw_waits_without_stalling(suite: Suite) -> None:
    """A SETLKW blocked on a conflict waits until the holder unlocks, and meanwhile other
    requests (stat, create, read) still get answered promptly."""
    path = create(suite.path("posix_wait"), b"w")
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_WRLCK, 0, 0)
        waiter = Child(_child_wait_lock, path)
        expect_true("waiter blocked", not waiter.done(LOCK_WAIT_SECONDS))
        started = time.monotonic()
        for index in range(20):
            os.stat(path)
            create(suite.path(f"during_wait{index}"), b"x")
            read_file(suite.path(f"during_wait{index}"))
        busy = time.monotonic() - started
        expect_true(f"other requests took {busy:.2f} s while a SETLKW waited", busy < 5.0)
        expect_true("waiter still blocked", not waiter.done(0))
        lock_range(fd, fcntl.F_UNLCK, 0, 0)
        waited = waiter.result(10.0)
        expect_true(f"waited {waited:.2f} s", waited >= LOCK_WAIT_SECONDS * 0.8)
    finally:
        os.close(fd)


@check
def check_posix_lock_released_on_close(suite: Suite) -> None:
    path = create(suite.path("posix_close"), b"c")
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_WRLCK, 0, 0)
        other_fd = os.open(path, os.O_RDONLY)
        os.close(other_fd)  # POSIX: closing any fd of the file drops the process's locks
        expect_equal("lock after close of another fd", "locked",
                     Child(_child_try_lock, path, fcntl.F_WRLCK, 0, 0).result())
    finally:
        os.close(fd)


def _child_lock_and_exit(path: str) -> None:
    fd = os.open(path, os.O_RDWR)
    lock_range(fd, fcntl.F_WRLCK, 0, 0)
    os._exit(0)


@check
def check_posix_lock_released_on_exit(suite: Suite) -> None:
    path = create(suite.path("posix_exit"), b"e")
    pid = os.fork()
    if pid == 0:
        try:
            _child_lock_and_exit(path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    expect_equal("child status", 0, status)
    fd = os.open(path, os.O_RDWR)
    try:
        expect_errno(None, lock_range, fd, fcntl.F_WRLCK, 0, 0)
    finally:
        os.close(fd)


def _child_flock(path: str, operation: int) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, operation)
        return "locked"
    finally:
        os.close(fd)


@check
def check_flock_conflict(suite: Suite) -> None:
    path = create(suite.path("flocked"), b"f")
    first = os.open(path, os.O_RDONLY)
    second = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(first, fcntl.LOCK_EX)
        expect_errno(errno.EWOULDBLOCK, fcntl.flock, second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        expect_errno(errno.EWOULDBLOCK, Child(_child_flock, path, fcntl.LOCK_SH | fcntl.LOCK_NB).result)
        fcntl.flock(first, fcntl.LOCK_SH)
        expect_equal("shared lock next to a shared lock", "locked",
                     Child(_child_flock, path, fcntl.LOCK_SH | fcntl.LOCK_NB).result())
        fcntl.flock(first, fcntl.LOCK_UN)
        expect_errno(None, fcntl.flock, second, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(first)
        os.close(second)


@check
def check_flock_released_on_close(suite: Suite) -> None:
    path = create(suite.path("flock_close"), b"f")
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)
    expect_equal("lock after close", "locked", Child(_child_flock, path, fcntl.LOCK_EX | fcntl.LOCK_NB).result())


@check
def check_flock_blocking_wait(suite: Suite) -> None:
    path = create(suite.path("flock_wait"), b"f")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        waiter = Child(_child_flock, path, fcntl.LOCK_EX)
        expect_true("waiter blocked", not waiter.done(LOCK_WAIT_SECONDS))
        os.stat(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        expect_equal("waiter got the lock", "locked", waiter.result(10.0))
    finally:
        os.close(fd)


@check
def check_ofd_lock_released_on_close(suite: Suite) -> None:
    """An open-file-description lock (F_OFD_SETLK) belongs to the open file, not the process,
    and goes with the file's last close, unlocked or not: another process may then lock the
    range."""
    path = create(suite.path("ofd_close"), b"o" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_WRLCK, 0, 10, F_OFD_SETLK)
        expect_errno((errno.EAGAIN, errno.EACCES), Child(_child_try_lock, path, fcntl.F_WRLCK, 0, 10).result)
    finally:
        os.close(fd)
    got, _ = outcome(Child(_child_try_lock, path, fcntl.F_WRLCK, 0, 10).result)
    expect_equal("another process's lock after the OFD lock's file was closed", "ok", errno_name(got))


@check
def check_locks_seen_by_host(suite: Suite) -> None:
    """The daemon holds guest locks as open-file-description locks on the host file, so
    host programs see them."""
    _host_required(suite)
    path = create(suite.path("host_locks"), b"h" * 100)
    fd = os.open(path, os.O_RDWR)
    try:
        lock_range(fd, fcntl.F_WRLCK, 10, 20)
        answer = suite.host("ofd_getlk", suite.host_path(path), start=0, length=0)
        expect_equal("host F_OFD_GETLK (type, start, length)", (fcntl.F_WRLCK, 10, 20),
                     (answer["type"], answer["start"], answer["length"]))
        lock_range(fd, fcntl.F_UNLCK, 10, 20)
        answer = suite.host("ofd_getlk", suite.host_path(path), start=0, length=0)
        expect_equal("host F_OFD_GETLK after unlock", fcntl.F_UNLCK, answer["type"])
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------

def run(suite: Suite, label: str, selected: set[str] | None) -> int:
    failures = 0
    for name, function in CHECKS:
        if selected and name not in selected:
            continue
        started = time.monotonic()
        try:
            function(suite)
            line = f"RESULT {label}.{name} ok"
        except CheckFailed as error:
            line = f"RESULT {label}.{name} fail {error}"
        except OSError as error:
            line = f"RESULT {label}.{name} fail unexpected {errno_name(error.errno)}: {error}"
        except Exception as error:
            frame = traceback.extract_tb(error.__traceback__)[-1]
            line = f"RESULT {label}.{name} fail {type(error).__name__}: {error} (line {frame.lineno})"
        failures += " fail " in line
        print(line.replace("\n", " | ")[:600], flush=True)
        print(f"TIME {label}.{name} {time.monotonic() - started:.2f}", flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mount", help="the virtio-fs mount (or any folder to validate the checks)")
    parser.add_argument("--label", default="fs", help="prefix of every check name")
    parser.add_argument("--cache", default="auto", help="the daemon's --cache mode")
    parser.add_argument("--host-requests", help="folder where the host answers HOSTOP requests")
    parser.add_argument("--host-share", help="the share's path as the host sees it, when the "
                                             "host is this machine (validation runs)")
    parser.add_argument("--other-mount", help="a second virtio-fs mount, for EXDEV")
    parser.add_argument("--big-dir", type=int, default=20000, help="entries in the readdir check")
    parser.add_argument("--prepare-fixtures", action="store_true",
                        help="create the fixture folders on --mount first (validation runs on "
                             "a local folder; the guest test has the host create them)")
    parser.add_argument("--only", default="", help="comma-separated check names")
    parser.add_argument("--list", action="store_true", help="print the check names and exit")
    options = parser.parse_args()
    if options.list:
        print("\n".join(name for name, _ in CHECKS))
        return 0
    if os.geteuid() != 0:
        parser.error("must run as root (checks switch to ordinary users)")
    if options.prepare_fixtures:
        prepare_fixtures(options.mount, options.big_dir)
    work = os.path.join(options.mount, f"conformance-{options.label}")
    os.mkdir(work, 0o777)
    os.chmod(work, 0o777)
    os.umask(0o022)
    os.chdir(work)
    host = Host(options.label, options.host_requests, options.host_share)
    suite = Suite(work, options.cache, host, options.big_dir, options.other_mount)
    selected = {name for name in options.only.split(",") if name} or None
    failures = run(suite, options.label, selected)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
