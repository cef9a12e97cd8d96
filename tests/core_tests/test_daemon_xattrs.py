"""Extended attributes seen from the front-end: every xattr opcode, --xattrmap, --posix-acl,
--security-label and the CVE-2021-20263 guard, against our daemon and the Rust reference.

The daemons run as root, so ``trusted.*`` works on every file type; ``user.*`` only exists on
regular files and folders (the host kernel's rule).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from virtiofsd.fuse import abi
from virtiofsd.fuse.abi import ROOT_ID, InitFlag, Opcode
from virtiofsd.testing import FuseReplyError, running_daemon
from virtiofsd.testing.fuse_client import LINUX_6_1_INIT_FLAGS

from support.replies import fuse_error

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

ACL_INIT_FLAGS = (LINUX_6_1_INIT_FLAGS | InitFlag.POSIX_ACL | InitFlag.SETXATTR_EXT
                  | InitFlag.DONT_MASK)
XATTR_CREATE, XATTR_REPLACE = 1, 2


#: Setting ``trusted.*`` needs CAP_SYS_ADMIN, which both daemons drop unless told to keep it.
TRUSTED_OPTIONS = ("--modcaps=+sys_admin",)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    directory = tmp_path / "share"
    directory.mkdir()
    (directory / "file").write_bytes(b"contents")
    (directory / "dir").mkdir()
    os.symlink("file", directory / "link")
    os.mkfifo(directory / "fifo")
    return directory


def host_xattrs(path: Path) -> dict[bytes, bytes]:
    return {os.fsencode(name): os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)}


def test_without_xattr_every_opcode_is_enosys(start_daemon, share: Path) -> None:
    with start_daemon(share) as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid
        assert fuse_error(fuse.getxattr, node, "user.a") == errno.ENOSYS
        assert fuse_error(fuse.listxattr, node) == errno.ENOSYS
        assert fuse_error(fuse.setxattr, node, "user.a", b"v") == errno.ENOSYS
        assert fuse_error(fuse.removexattr, node, "user.a") == errno.ENOSYS


@pytest.mark.parametrize("name", ["file", "dir", "link", "fifo"])
def test_every_opcode_on_every_file_type(start_daemon, daemon_kind: str, share: Path,
                                         name: str) -> None:
    with start_daemon(share, "--xattr", *TRUSTED_OPTIONS) as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, name).nodeid
        fuse.setxattr(node, "trusted.colour", b"blue")
        assert host_xattrs(share / name)[b"trusted.colour"] == b"blue"
        if name == "link":
            assert b"trusted.colour" not in host_xattrs(share / "file"), "never the target"
        assert fuse.getxattr(node, "trusted.colour") == b"blue"
        assert fuse.getxattr_size(node, "trusted.colour") == 4
        assert fuse_error(fuse.getxattr, node, "trusted.colour", 2) == errno.ERANGE
        assert b"trusted.colour" in fuse.listxattr(node)
        listed_size = fuse.listxattr_size(node)
        assert listed_size == len(b"".join(n + b"\0" for n in fuse.listxattr(node)))
        assert fuse_error(fuse.listxattr, node, 1) == errno.ERANGE
        assert fuse_error(fuse.setxattr, node, "trusted.colour", b"x",
                          XATTR_CREATE) == errno.EEXIST
        assert fuse_error(fuse.setxattr, node, "trusted.other", b"x",
                          XATTR_REPLACE) == errno.ENODATA
        fuse.setxattr(node, "trusted.colour", b"red", XATTR_REPLACE)
        assert fuse.getxattr(node, "trusted.colour") == b"red"
        fuse.removexattr(node, "trusted.colour")
        assert fuse_error(fuse.getxattr, node, "trusted.colour") == errno.ENODATA
        assert fuse_error(fuse.removexattr, node, "trusted.colour") == errno.ENODATA
        user_error = None if name in ("file", "dir") else errno.EPERM
        if user_error is None:
            fuse.setxattr(node, "user.note", b"")
            assert fuse.getxattr(node, "user.note") == b""
        else:
            assert fuse_error(fuse.setxattr, node, "user.note", b"v") == user_error


def test_acl_names_are_refused_without_posix_acl(start_daemon, share: Path) -> None:
    subprocess.run(["setfacl", "-m", "u:1234:r", str(share / "file")], check=True)
    with start_daemon(share, "--xattr") as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid
        for name in ("system.posix_acl_access", "system.posix_acl_default"):
            assert fuse_error(fuse.getxattr, node, name) == errno.EOPNOTSUPP
            assert fuse_error(fuse.setxattr, node, name, b"\x02\0\0\0") == errno.EOPNOTSUPP
            assert fuse_error(fuse.removexattr, node, name) == errno.EOPNOTSUPP
        assert b"system.posix_acl_access" not in fuse.listxattr(node)


# -- --xattrmap -------------------------------------------------------------------------------


def test_map_prefixes_guest_names_and_hides_host_ones(start_daemon, daemon_kind: str,
                                                      share: Path) -> None:
    os.setxattr(share / "file", "user.host", b"host's own")
    os.setxattr(share / "file", "trusted.host", b"host's own")
    with start_daemon(share, "--xattrmap", ":map::user.virtiofs.:") as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid
        assert fuse.listxattr(node) == []
        if daemon_kind == "ours":
            # Deliberately better: the Rust daemon answers a size query with the length of the
            # host's unfiltered list (here 10 bytes for the hidden user.host).
            assert fuse.listxattr_size(node) == 0
        fuse.setxattr(node, "trusted.guest", b"g")
        fuse.setxattr(node, "security.capability", b"\x01\0\0\x02" + bytes(16))
        stored = host_xattrs(share / "file")
        assert stored[b"user.virtiofs.trusted.guest"] == b"g"
        assert b"trusted.guest" not in stored and b"security.capability" not in stored
        assert sorted(fuse.listxattr(node)) == [b"security.capability", b"trusted.guest"]
        assert fuse.getxattr(node, "trusted.guest") == b"g"
        assert fuse_error(fuse.getxattr, node, "user.virtiofs.x") == errno.ENODATA
        fuse.removexattr(node, "trusted.guest")
        assert b"user.virtiofs.trusted.guest" not in host_xattrs(share / "file")


def test_bad_is_eperm_enodata_on_get_and_unsupported_is_enotsup(start_daemon, daemon_kind: str,
                                                                share: Path) -> None:
    rules = "/bad/all/security./security./ /unsupported/client/trusted.secret.// /ok/all///"
    os.setxattr(share / "file", "security.host", b"label")
    with start_daemon(share, "--xattrmap", rules, *TRUSTED_OPTIONS) as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid
        assert fuse_error(fuse.setxattr, node, "security.x", b"v") == errno.EPERM
        assert fuse_error(fuse.removexattr, node, "security.x") == errno.EPERM
        assert fuse_error(fuse.getxattr, node, "security.host") == errno.ENODATA
        assert fuse_error(fuse.setxattr, node, "trusted.secret.k", b"v") == errno.EOPNOTSUPP
        assert b"security.host" not in fuse.listxattr(node)
        fuse.setxattr(node, "trusted.plain", b"ok")
        assert host_xattrs(share / "file")[b"trusted.plain"] == b"ok"


@pytest.mark.parametrize("rules", [":prefix:client:hi", ":TOMATOPIRATE:all:a:b:",
                                   ":map::x.: :ok:all:::"])
def test_malformed_map_stops_the_daemon_at_start(command_of, share: Path, rules: str) -> None:
    """Both daemons refuse to start; ours names the rule."""
    kind = "ours"
    argv = [a.replace("{socket_path}", str(share.parent / "s")).replace("{shared_dir}", str(share))
            for a in command_of(kind, "--xattrmap", rules)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--xattrmap: rule" in result.stderr + result.stdout


def test_a_map_without_catch_all_is_refused_at_start(command_of, share: Path) -> None:
    argv = [a.replace("{socket_path}", str(share.parent / "s")).replace("{shared_dir}", str(share))
            for a in command_of("ours", "--xattrmap", ":prefix:client:trusted.:user.vm.:")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "rule 1 (:prefix:client:trusted.:user.vm.:)" in result.stderr
    assert not (share.parent / "s").exists()


# -- CVE-2021-20263: a remapped security.capability is dropped by the daemon ---------------------

CAPABILITY = b"\x01\0\0\x02" + bytes(16)


def test_remapped_capability_dropped_on_write_truncate_chown_and_o_trunc(
        start_daemon, share: Path) -> None:
    host_name = "user.virtiofs.security.capability"
    with start_daemon(share, "--xattrmap", ":map::user.virtiofs.:") as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid

        def armed() -> bool:
            return host_name.encode() in host_xattrs(share / "file")

        fuse.setxattr(node, "security.capability", CAPABILITY)
        handle = fuse.open(node, os.O_RDWR)
        assert armed()
        fuse.write(node, handle.fh, 0, b"x")
        assert not armed(), "write"
        fuse.setxattr(node, "security.capability", CAPABILITY)
        fuse.setattr(node, size=1)
        assert not armed(), "truncate"
        fuse.setxattr(node, "security.capability", CAPABILITY)
        fuse.setattr(node, uid=0, gid=0)
        assert not armed(), "chown"
        fuse.setxattr(node, "security.capability", CAPABILITY)
        fuse.release(node, fuse.open(node, os.O_RDWR | os.O_TRUNC).fh)
        assert not armed(), "O_TRUNC"
        fuse.release(node, handle.fh)


def test_remapped_capability_dropped_when_create_truncates_an_existing_file(
        start_daemon, share: Path) -> None:
    """A guest open(O_CREAT|O_TRUNC) of a name its cache does not know is a CREATE, not an
    OPEN: on an existing file it truncates it, so the remapped capability must go as for an
    O_TRUNC OPEN.  A CREATE that does not truncate (no O_TRUNC, or O_EXCL, which fails) keeps
    it, as the kernel keeps a real one."""
    host_name = b"user.virtiofs.security.capability"
    with start_daemon(share, "--xattrmap", ":map::user.virtiofs.:") as session:
        fuse = session.client
        node = fuse.lookup(ROOT_ID, "file").nodeid
        fuse.setxattr(node, "security.capability", CAPABILITY)

        def armed() -> bool:
            return host_name in host_xattrs(share / "file")

        entry, handle = fuse.create(ROOT_ID, "file", 0o644, os.O_RDWR | os.O_CREAT)
        fuse.release(entry.nodeid, handle.fh)
        assert armed(), "a CREATE that opens without truncating keeps the capability"
        assert fuse_error(fuse.create, ROOT_ID, "file", 0o644,
                          os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_TRUNC) == errno.EEXIST
        assert armed(), "O_EXCL on an existing name fails and changes nothing"
        entry, handle = fuse.create(ROOT_ID, "file", 0o644, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        fuse.release(entry.nodeid, handle.fh)
        assert (share / "file").read_bytes() == b"", "the CREATE truncated the file"
        assert not armed(), "CREATE with O_TRUNC of an existing file"


def test_the_guard_checks_a_create_name_before_opening_it(command_of, share: Path) -> None:
    """CREATE with O_TRUNC and without O_EXCL (the guard's case) of ``.`` and ``..`` gets the
    same EINVAL with the map that renames security.capability as without it: at the root,
    where ``..`` would lead out of the share (--sandbox none), and under a regular file, in
    which no name can be opened (ENOTDIR, had the guard opened it before the check)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    answers = {}
    for options in ((), ("--xattrmap", ":map::user.virtiofs.:")):
        with running_daemon(command_of("ours", *options), share) as session:
            fuse = session.client
            parents = (ROOT_ID, fuse.lookup(ROOT_ID, "file").nodeid)
            answers[options] = [fuse_error(fuse.create, parent, name, 0o644, flags)
                                for parent in parents for name in (".", "..")]
            assert "Traceback" not in session.log_text()
    assert list(answers.values()) == [[errno.EINVAL] * 4] * 2, answers


# -- --posix-acl --------------------------------------------------------------------------------


def test_posix_acl_refuses_a_guest_without_acl_flags(start_daemon, share: Path) -> None:
    with start_daemon(share, "--posix-acl", init=False) as session:
        with pytest.raises(FuseReplyError) as failure:
            session.client.init(LINUX_6_1_INIT_FLAGS & ~InitFlag.POSIX_ACL)
        assert failure.value.errno == errno.EPROTO


def test_posix_acl_umask_default_acl_and_kill_sgid(start_daemon, share: Path) -> None:
    inherit = share / "inherit"
    inherit.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx,u:1234:rwx", str(inherit)],
                   check=True)
    with start_daemon(share, "--posix-acl", init=False) as session:
        fuse = session.client
        out = fuse.init(ACL_INIT_FLAGS)
        acl_flags = InitFlag.POSIX_ACL | InitFlag.SETXATTR_EXT | InitFlag.DONT_MASK
        assert out.flags & acl_flags == acl_flags
        # The umask applies where no default ACL exists...
        fuse.mkdir(ROOT_ID, "masked", 0o777, umask=0o027)
        assert stat.S_IMODE(os.stat(share / "masked").st_mode) == 0o750
        entry, handle = fuse.create(ROOT_ID, "masked-file", 0o666, umask=0o077)
        fuse.release(entry.nodeid, handle.fh)
        assert stat.S_IMODE(os.stat(share / "masked-file").st_mode) == 0o600
        # ...and a default ACL replaces it.
        parent = fuse.lookup(ROOT_ID, "inherit").nodeid
        fuse.mkdir(parent, "child", 0o777, umask=0o077)
        child = inherit / "child"
        acl = subprocess.run(["getfacl", "-cp", str(child)], capture_output=True, text=True,
                             check=True).stdout
        assert "user:1234:rwx" in acl and "default:user:1234:rwx" in acl
        assert stat.S_IMODE(os.stat(child).st_mode) == 0o777
        # The daemon's own umask stays 0 for everything else.
        fuse.mkdir(ROOT_ID, "unmasked", 0o777, umask=0)
        assert stat.S_IMODE(os.stat(share / "unmasked").st_mode) == 0o777
        # SETXATTR_ACL_KILL_SGID clears S_ISGID on an access-ACL change.
        os.chmod(share / "file", 0o2775)
        node = fuse.lookup(ROOT_ID, "file").nodeid
        value = os.getxattr(child, "system.posix_acl_access")
        fuse.setxattr(node, "system.posix_acl_access", value,
                      setxattr_flags=abi.SETXATTR_ACL_KILL_SGID)
        assert not os.stat(share / "file").st_mode & stat.S_ISGID
        assert b"system.posix_acl_access" in fuse.listxattr(node)


# -- --security-label ---------------------------------------------------------------------------


def security_context(name: bytes, value: bytes) -> bytes:
    """The SECURITY_CTX request extension a Linux guest appends to creations."""
    body = abi.SECCTX.pack(len(value), 0) + name + b"\0" + value
    body += bytes(-(abi.SECCTX_HEADER.size + len(body)) % 8)
    return abi.SECCTX_HEADER.pack(abi.SECCTX_HEADER.size + len(body), 1) + body


LABEL = b"system_u:object_r:container_file_t:s0\0"


def test_security_label_applied_at_creation_under_the_selinux_map(
        start_daemon, daemon_kind: str, share: Path) -> None:
    """The README's SELinux recipe: --xattrmap=:map:security.selinux:trusted.virtiofs.: with
    --modcaps=+sys_admin."""
    with start_daemon(share, "--security-label", "--xattrmap",
                      ":map:security.selinux:trusted.virtiofs.:",
                      *TRUSTED_OPTIONS, init=False) as session:
        fuse = session.client
        fuse.init(LINUX_6_1_INIT_FLAGS | InitFlag.SECURITY_CTX | InitFlag.INIT_EXT)
        ext = security_context(b"security.selinux", LABEL)
        creations = {
            "created": (Opcode.CREATE, (abi.CREATE_IN.pack(os.O_RDWR | os.O_CREAT, 0o644, 0, 0),
                                        b"created\0")),
            "folder": (Opcode.MKDIR, (abi.MKDIR_IN.pack(0o755, 0), b"folder\0")),
            "node": (Opcode.MKNOD, (abi.MKNOD_IN.pack(stat.S_IFIFO | 0o644, 0, 0, 0), b"node\0")),
            "symlink": (Opcode.SYMLINK, (b"symlink\0", b"target\0")),
        }
        for name, (opcode, body) in creations.items():
            error, _payload = fuse.request(opcode, ROOT_ID, body, 4096, extensions=ext)
            assert error == 0, (name, error)
            stored = host_xattrs(share / name)
            assert stored.get(b"trusted.virtiofs.security.selinux") == LABEL, name
            assert b"security.selinux" not in stored
        node = fuse.lookup(ROOT_ID, "folder").nodeid
        assert fuse.getxattr(node, "security.selinux") == LABEL
        # a guest label set later lands under the remapped name too
        file_node = fuse.lookup(ROOT_ID, "file").nodeid
        fuse.setxattr(file_node, "security.selinux", LABEL)
        assert host_xattrs(share / "file")[b"trusted.virtiofs.security.selinux"] == LABEL


def test_security_label_refuses_a_guest_without_security_ctx(start_daemon, share: Path) -> None:
    with start_daemon(share, "--security-label", init=False) as session:
        with pytest.raises(FuseReplyError) as failure:
            session.client.init(LINUX_6_1_INIT_FLAGS)
        assert failure.value.errno == errno.EPROTO


def test_a_failing_label_leaves_no_node_behind(start_daemon, share: Path) -> None:
    with start_daemon(share, "--security-label", init=False) as session:
        fuse = session.client
        fuse.init(LINUX_6_1_INIT_FLAGS | InitFlag.SECURITY_CTX | InitFlag.INIT_EXT)
        ext = security_context(b"user.x", b"v")  # user.* is refused on a FIFO and a symlink
        body = (abi.MKNOD_IN.pack(stat.S_IFIFO | 0o644, 0, 0, 0), b"node\0")
        error, _ = fuse.request(Opcode.MKNOD, ROOT_ID, body, 4096, extensions=ext)
        assert error == errno.EPERM
        assert not os.path.lexists(share / "node")
        error, _ = fuse.request(Opcode.SYMLINK, ROOT_ID, (b"sym\0", b"t\0"), 4096,
                                extensions=ext)
        assert error == errno.EPERM
        assert not os.path.lexists(share / "sym")
