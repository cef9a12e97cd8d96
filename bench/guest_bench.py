"""Times a fixed guest workload against our daemon and the Rust reference, in one run.

    python bench/guest_bench.py [--daemons rust,ours] [--files 2000] [--mib 256] [--reads 2000]
        [--cache never] [--threads 4] [--kernel trixie --queues 4] [--phases randread]

Each daemon gets its own guest boot on a fresh shared folder.  All timing happens inside the
guest, by a small static C tool built here (busybox has no fio, and a shell loop of dd
processes would mostly measure fork and exec under TCG).  The guest's page, dentry and inode
caches are dropped before every phase so each phase reaches the daemon:

* metadata: create N empty files, stat them (one LOOKUP each), list the directory 20 times,
  unlink them;
* data: write M MiB sequentially (1 MiB writes, then fsync), read them back sequentially,
  and do R random 4 KiB reads with O_DIRECT (one daemon round trip each).

``--threads N`` boots N vCPUs (TCG with one host thread each) and runs the random reads in N
processes; ``--kernel trixie --queues N`` (ours only) gives the device N request queues, which
Linux 6.11+ spreads the CPUs over.

Absolute figures under TCG are far below real hardware; the ratio ours/rust is the point.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from guest import image, runner  # after the sys.path insertion above

TOOL_SOURCE = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* One benchmark phase per run: prints "BENCH <op> <count> <seconds>". */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what, const char *path)
{
    fprintf(stderr, "vfsbench: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: vfsbench create|stat|readdir|unlink|write|read|randread PATH N "
                        "[PROCESSES]\n");
        return 2;
    }
    const char *op = argv[1], *path = argv[2];
    long n = atol(argv[3]), count = 0;
    /* randread only: PROCESSES readers, N reads each, one per CPU where the kernel puts them */
    long processes = argc == 5 ? atol(argv[4]) : 1, worker = 0;
    static char name[4096];
    char *buffer;
    if (posix_memalign((void **)&buffer, 4096, 1 << 20))
        die("posix_memalign", "");
    for (long i = 0; i < (1 << 20); i++)
        buffer[i] = (char)(i * 7 + i / 4096);

    double start = now();
    if (!strcmp(op, "create") || !strcmp(op, "stat") || !strcmp(op, "unlink")) {
        for (long i = 0; i < n; i++, count++) {
            struct stat info;
            snprintf(name, sizeof name, "%s/file%06ld", path, i);
            if (op[0] == 'c') {
                int fd = open(name, O_CREAT | O_EXCL | O_WRONLY, 0644);
                if (fd < 0 || close(fd))
                    die("create", name);
            } else if (op[0] == 's') {
                if (stat(name, &info))
                    die("stat", name);
            } else if (unlink(name)) {
                die("unlink", name);
            }
        }
    } else if (!strcmp(op, "readdir")) {
        for (long i = 0; i < n; i++) {
            DIR *dir = opendir(path);
            if (!dir)
                die("opendir", path);
            errno = 0;
            while (readdir(dir))
                count++;
            if (errno)
                die("readdir", path);
            closedir(dir);
        }
    } else if (!strcmp(op, "write")) {
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        if (fd < 0)
            die("open", path);
        for (; count < n; count++)
            if (write(fd, buffer, 1 << 20) != 1 << 20)
                die("write", path);
        if (fsync(fd) || close(fd))
            die("fsync", path);
    } else if (!strcmp(op, "read")) {
        int fd = open(path, O_RDONLY);
        ssize_t got;
        if (fd < 0)
            die("open", path);
        while ((got = read(fd, buffer, 1 << 20)) > 0)
            count += got;
        if (got < 0)
            die("read", path);
        close(fd);
        count >>= 20;
    } else if (!strcmp(op, "randread")) {
        for (worker = 1; worker < processes; worker++)
            if (fork() == 0)
                break;
        if (worker == processes)
            worker = 0;
        int fd = open(path, O_RDONLY | O_DIRECT);
        struct stat info;
        unsigned long long state = 88172645463325252ULL + 7919ULL * worker;
        if (fd < 0 || fstat(fd, &info))
            die("open", path);
        long blocks = info.st_size / 4096;
        for (; count < n; count++) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            if (pread(fd, buffer, 4096, (off_t)(state % blocks) * 4096) != 4096)
                die("pread", path);
        }
        close(fd);
        if (worker)
            return 0;
        for (long i = 1; i < processes; i++) {
            int status;
            if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
                die("reader", path);
        }
        count *= processes;
    } else {
        fprintf(stderr, "vfsbench: unknown operation %s\n", op);
        return 2;
    }
    printf("BENCH %s %ld %.6f\n", op, count, now() - start);
    return 0;
}
"""

WORKLOAD = """
M=/mnt
drop() {{ sync; echo 3 > /proc/sys/vm/drop_caches; }}
run() {{ drop; /vfsbench "$@" || echo "BENCH-ERROR $*"; }}
mkdir $M/meta
run create $M/meta {files}
run stat $M/meta {files}
run readdir $M/meta 20
run unlink $M/meta {files}
run write $M/seq.bin {mib}
run read $M/seq.bin 0
run randread $M/seq.bin {reads} {threads}
rm -f $M/seq.bin
"""

# (operation printed by the tool, row label, unit of the rate column)
PHASES = (
    ("create", "create files", "files/s"),
    ("stat", "stat (lookup) files", "files/s"),
    ("readdir", "readdir entries (20 listings)", "entries/s"),
    ("unlink", "unlink files", "files/s"),
    ("write", "sequential write + fsync", "MiB/s"),
    ("read", "sequential read", "MiB/s"),
    ("randread", "random 4 KiB O_DIRECT reads (all readers)", "reads/s"),
)


#: Phases that others need: the files to stat, list and unlink; the file to read.
PREPARES = {"create": {"stat", "readdir", "unlink"}, "write": {"read", "randread"}}


def select_phases(script: str, keep: set[str]) -> str:
    """The workload with only the ``run`` lines of ``keep`` and of what they need."""
    def wanted(line: str) -> bool:
        if not line.startswith("run "):
            return True
        phase = line.split()[1]
        return phase in keep or bool(PREPARES.get(phase, set()) & keep)
    return "\n".join(line for line in script.splitlines() if wanted(line))


def build_tool(cache: pathlib.Path) -> bytes:
    """Compiles the static benchmark tool once per source version."""
    key = hashlib.sha256(TOOL_SOURCE.encode()).hexdigest()[:12]
    binary = cache / f"vfsbench-{key}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        source = cache / f"vfsbench-{key}.c"
        source.write_text(TOOL_SOURCE)
        subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
    return binary.read_bytes()


def run_daemon(daemon: str, tool: bytes, arguments: argparse.Namespace) -> dict[str, tuple[int, float]]:
    workspace = pathlib.Path(tempfile.mkdtemp(prefix=f"guest-bench-{daemon}-", dir="/var/tmp"))
    share = workspace / "share"
    share.mkdir()
    try:
        script = WORKLOAD.format(files=arguments.files, mib=arguments.mib, reads=arguments.reads,
                                 threads=arguments.threads)
        if arguments.phases:
            script = select_phases(script, set(arguments.phases.split(",")))
        daemon_args = arguments.daemon_args.split()
        if arguments.cache:
            daemon_args += ["--cache", arguments.cache]
        if arguments.queues != 1:
            daemon_args += ["--num-request-queues", str(arguments.queues)]
        result = runner.boot(
            daemon, share, script, daemon_args=daemon_args,
            timeout=arguments.timeout, extra_files={"vfsbench": tool},
            log_dir=workspace / "logs", kernel=arguments.kernel, cpus=arguments.threads,
            request_queues=arguments.queues,
        )
    finally:
        shutil.rmtree(share, ignore_errors=True)
    figures: dict[str, tuple[int, float]] = {}
    for line in result.console.splitlines():
        fields = line.split()
        if fields[:1] == ["BENCH"] and len(fields) == 4:
            figures[fields[1]] = (int(fields[2]), float(fields[3]))
        elif line.startswith(("BENCH-ERROR", "vfsbench:")):
            print(f"{daemon}: {line}", file=sys.stderr)
    shutil.rmtree(workspace, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", default="rust,ours", help="comma-separated: rust, ours")
    parser.add_argument("--files", type=int, default=2000, help="files in the metadata phases")
    parser.add_argument("--mib", type=int, default=256, help="MiB written and read sequentially")
    parser.add_argument("--reads", type=int, default=2000, help="random 4 KiB reads")
    parser.add_argument("--daemon-args", default="", help="extra daemon flags for both daemons")
    parser.add_argument("--cache", choices=("auto", "always", "never", "metadata"),
                        help="--cache of both daemons (never: every read and write reaches them)")
    parser.add_argument("--threads", type=int, default=1,
                        help="guest vCPUs, and parallel readers in the random-read phase")
    parser.add_argument("--queues", type=int, default=1,
                        help="request queues of the device (ours only: the Rust daemon has 1)")
    parser.add_argument("--kernel", choices=image.KERNELS, default=image.DEFAULT_KERNEL,
                        help="guest kernel (trixie's 6.12 is the first to use several queues)")
    parser.add_argument("--phases", default="",
                        help="comma-separated subset of: " + ",".join(p[0] for p in PHASES))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per guest boot")
    arguments = parser.parse_args(argv)
    if min(arguments.files, arguments.mib, arguments.reads, arguments.threads,
           arguments.queues) < 1:
        parser.error("--files, --mib, --reads, --threads and --queues must be at least 1")

    tool = build_tool(image.DEFAULT_CACHE / "bench")
    daemons = [name.strip() for name in arguments.daemons.split(",") if name.strip()]
    results: dict[str, dict[str, tuple[int, float]]] = {}
    for daemon in daemons:
        print(f"booting the guest against {daemon} ...", file=sys.stderr, flush=True)
        try:
            results[daemon] = run_daemon(daemon, tool, arguments)
        except runner.BootError as error:
            print(f"{daemon}: {error}", file=sys.stderr)
            results[daemon] = {}

    def cell(daemon: str, operation: str, unit: str) -> str:
        figure = results[daemon].get(operation)
        if figure is None:
            return "failed"
        count, seconds = figure
        return f"{seconds:8.3f} s {count / seconds:10.1f} {unit}" if seconds > 0 else f"{seconds} s"

    label_width = max(len(label) for _, label, _ in PHASES) + 2
    header = f"{'phase':<{label_width}}" + "".join(f"{name:>30}" for name in daemons)
    comparing = {"ours", "rust"} <= set(daemons)
    print(header + (f"{'time ours/rust':>16}" if comparing else ""))
    for operation, label, unit in PHASES:
        if arguments.phases and not all(results[name].get(operation) for name in daemons):
            continue
        row = f"{label:<{label_width}}" + "".join(f"{cell(name, operation, unit):>30}" for name in daemons)
        if comparing:
            ours, rust = results["ours"].get(operation), results["rust"].get(operation)
            ratio = f"{ours[1] / rust[1]:.2f}x" if ours and rust and rust[1] > 0 else "n/a"
            row += f"{ratio:>16}"
        print(row)
    print(f"(workload: {arguments.files} files, {arguments.mib} MiB sequential, "
          f"{arguments.reads} random reads x {arguments.threads} readers on as many vCPUs, "
          f"{arguments.queues} request queue(s), kernel {arguments.kernel}; "
          f"cache {arguments.cache or 'default'}; daemon flags: {arguments.daemon_args or 'none'})")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
