"""The body of scripts/demo.sh: one narrated guest boot against the chosen daemon."""

from __future__ import annotations

import pathlib
import shlex
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from guest import image, runner  # after the sys.path insertion above

GUEST_SCRIPT = """
show() { echo; echo "guest\\$ $1"; sh -c "$1"; }
show 'mount | grep virtiofs'
show 'ls -l /mnt'
show 'cat /mnt/hello.txt'
show 'echo "Hello back from the guest, running $(uname -sr)" > /mnt/from-guest.txt'
show 'ls -l /mnt'
echo
"""


def main(argv: list[str]) -> int:
    daemon = argv[1] if len(argv) > 1 else "ours"
    workspace = pathlib.Path(tempfile.mkdtemp(prefix="virtiofsd-demo-"))
    share = workspace / "share"
    share.mkdir()
    try:
        (share / "hello.txt").write_text("Hello from the host!\n")
        command = runner.daemon_command(daemon)
        print(f"\n== shared folder on the host: {share}")
        print(f"   containing hello.txt: {(share / 'hello.txt').read_text().strip()!r}")
        print("== guest image (Debian 12 kernel + busybox initramfs), built once and cached:")
        built = image.build()
        print(f"   {built.kernel}\n   {built.initramfs}")
        print(f"== starting the daemon ({daemon}):\n   {shlex.join(command)} "
              f"--socket-path <tmp>/vhost.sock --shared-dir {share}")
        print("== booting the guest under QEMU (TCG, about 5-20 s); it mounts the share "
              f"(tag '{image.MOUNT_TAG}') at /mnt ...")
        try:
            result = runner.boot(daemon, share, GUEST_SCRIPT, timeout=180, log_dir=workspace / "logs")
        except runner.BootError as error:
            print(f"\nthe demo failed:\n{error}", file=sys.stderr)
            return 1
        print(f"== the guest's console ({result.seconds:.1f} s):")
        for line in result.console.splitlines():
            if not line.startswith(("GUEST-", "[")):
                print(f"   {line}")
        print("== the daemon's log:")
        for line in result.daemon_log.splitlines():
            print(f"   {line}")
        print(f"== daemon exit status after the guest powered off: {result.daemon_returncode}")
        written = share / "from-guest.txt"
        print(f"== back on the host: {written}")
        if not written.exists():
            print("   the file the guest wrote is missing!", file=sys.stderr)
            return 1
        info = written.stat()
        print(f"   owner {info.st_uid}:{info.st_gid}, {info.st_size} bytes: {written.read_text().strip()!r}")
        print(f"== done; removing {workspace}")
        return 0
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
