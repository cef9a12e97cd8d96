"""scripts/measure-syscalls.py keeps exactly the calls made under the filter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "measure-syscalls.py"


def load_script():
    spec = importlib.util.spec_from_file_location("measure_syscalls", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_calls_after_the_filter_and_from_later_threads_count(tmp_path):
    measure = load_script()
    traces = {
        # The namespace sandbox's parent: it never loads a filter.
        "run-1.100": 'execve("/usr/bin/python", [...]) = 0\nunshare(CLONE_NEWNS) = 0\n'
                     "wait4(101, ...) = 101\nunlink(\"s.sock\") = 0\n",
        # A helper process started during start-up (ctypes.util.find_library).
        "run-1.99": "close(4) = 0\nexecve(\"/sbin/ldconfig\", [...]) = 0\nbrk(NULL) = 0x1\n",
        # The serving child: start-up, libseccomp's probe, the load, then serving.
        "run-1.101": "mount(NULL, \"/\", NULL, MS_REC|MS_SLAVE, NULL) = 0\n"
                     "pivot_root(\".\", \".\") = 0\n"
                     "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, NULL) = -1 "
                     "EFAULT (Bad address)\n"
                     "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, "
                     "{len=113, filter=0x5}) = 0\n"
                     "accept4(3, NULL, NULL, SOCK_CLOEXEC) = 5\n"
                     "clone3({flags=CLONE_VM|CLONE_THREAD, ...}, 88) = 102\n",
        # A worker thread started under the filter.
        "run-1.102": "rseq(0x7f, 0x20, 0, 0x53053053) = 0\n"
                     "preadv2(7, [...], 1, 0, 0) = 4096\n",
    }
    for name, text in traces.items():
        (tmp_path / name).write_text(text)
    measurement = measure.collect(tmp_path)
    assert measurement.base == {"accept4", "rseq", "preadv2"}
    assert measurement.ruled == {"clone3"}, "its errno answer is a rule of its own"


def write_run(directory: Path, pid: int, arguments: list[str], calls: list[str]) -> None:
    """One recorded run as the wrapper leaves it: the command line, one thread's trace."""
    argv = ["/usr/bin/python", "-m", "virtiofsd", "--socket-path", "/gone/s.sock",
            "--shared-dir", "/gone/share", *arguments, "--seccomp", "log"]
    (directory / f"argv-{pid}").write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
    (directory / f"run-{pid}.{pid}").write_text(
        "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=9, filter=0x5}) = 0\n"
        + "".join(f"{call}(3) = 0\n" for call in calls))


def test_what_a_configuration_adds_stays_out_of_the_base_list(tmp_path):
    measure = load_script()
    write_run(tmp_path, 1, ["-o", "flock", "--xattr"], ["read", "flock", "getxattr"])
    write_run(tmp_path, 2, ["--inode-file-handles=prefer"], ["write", "open_by_handle_at"])
    write_run(tmp_path, 3, ["--inode-file-handles=never"], ["fsync", "name_to_handle_at"])
    write_run(tmp_path, 4, ["--plugin", "probe"], ["getpriority"])
    measurement = measure.collect(tmp_path)
    assert measurement.base == {"read", "write", "fsync"}
    assert measurement.configured == {"flock", "getxattr", "open_by_handle_at"}
    assert measurement.ruled == {"name_to_handle_at"}, "a feature call without the feature"
    assert measurement.plugin_runs == 1


def test_rewrite_replaces_only_the_measured_block(tmp_path, monkeypatch):
    measure = load_script()
    target = tmp_path / "syscalls.py"
    target.write_text('before = 1\n# BEGIN MEASURED (generated)\nMEASURED = frozenset({\n'
                      '    "old",\n})\n# END MEASURED\nafter = 2\n')
    monkeypatch.setattr(measure, "SYSCALLS_FILE", target)
    measure.rewrite({"read", "accept4"})
    namespace: dict = {}
    exec(target.read_text(), namespace)
    assert namespace["MEASURED"] == frozenset({"read", "accept4"})
    assert namespace["before"] == 1 and namespace["after"] == 2
