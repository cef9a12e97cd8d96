/* Lock checks run inside the guest on the virtio-fs share, one "RESULT name ok|fail detail"
 * line each (the protocol of tests/guest/scripts/lib.sh).  Built statically on the host by
 * tests/guest/test_locks.py, since the guest's busybox has no lock tool.
 *
 * usage: lockprobe DIR   (DIR holds host-locked (a host process holds a write lock on all of
 * it) and host-flocked (a host process holds flock LOCK_EX on it)).
 *        lockprobe hold FILE UNTIL   (tests/guest/test_migration.py: write-lock bytes 0..99 of
 * FILE and flock it LOCK_EX through a second open, say "VALUE locks_taken", wait until UNTIL
 * exists (the live migration is over), then move the POSIX lock (unlock 50..99, lock it again)
 * and convert the flock, through whichever daemon now serves the share, and exit: the exit
 * releases both.  Meanwhile a child waits in F_SETLKW for bytes 200..299, which the host holds
 * until the migration is over, and says how that wait ended: "VALUE setlkw_across ok" or
 * "... errno N".)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char path[4096];

static void result(const char *name, int ok, const char *detail)
{
    printf("RESULT %s %s %s\n", name, ok ? "ok" : "fail", ok ? "" : detail);
    fflush(stdout);
}

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &fl);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs fn in a child; returns its exit status (0 = the child's checks held). */
static int in_child(int (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(fn());
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static int child_conflicts(void)
{
    int fd = open(path, O_RDWR);
    if (lock(fd, F_SETLK, F_RDLCK, 50, 11) == 0)
        return 1;
    if (errno != EAGAIN && errno != EACCES)
        return 2;
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 11 };
    if (fcntl(fd, F_GETLK, &fl) != 0)
        return 3;
    if (fl.l_type != F_WRLCK || fl.l_start != 0 || fl.l_len != 100 || fl.l_pid != getppid())
        return 4;
    if (lock(fd, F_SETLK, F_WRLCK, 100, 10) != 0)
        return 5;
    return 0;
}

static int child_locks_freely(void)
{
    int fd = open(path, O_RDWR);
    return lock(fd, F_SETLK, F_WRLCK, 0, 0) == 0 ? 0 : 1;
}

static int child_locks_and_exits(void)
{
    int fd = open(path, O_RDWR);
    return lock(fd, F_SETLK, F_WRLCK, 0, 0) == 0 ? 0 : 1;
}

static int flock_child_blocked(void)
{
    int fd = open(path, O_RDONLY);
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 1;
    return errno == EWOULDBLOCK ? 0 : 2;
}

static int hold(const char *file, const char *until)
{
    char detail[256];
    int fd = open(file, O_RDWR);
    int flocked = open(file, O_RDONLY);
    if (fd < 0 || flocked < 0 || lock(fd, F_SETLK, F_WRLCK, 0, 100) != 0
        || flock(flocked, LOCK_EX | LOCK_NB) != 0) {
        result("locks_taken", 0, strerror(errno));
        return 1;
    }
    pid_t waiter = fork();
    if (waiter == 0) {
        alarm(120);
        int wfd = open(file, O_RDWR);
        if (lock(wfd, F_SETLKW, F_WRLCK, 200, 100) == 0)
            printf("VALUE setlkw_across ok\n");
        else
            printf("VALUE setlkw_across errno %d\n", errno);
        fflush(stdout);
        _exit(0);
    }
    printf("VALUE locks_taken 1\n");
    fflush(stdout);
    while (access(until, F_OK) != 0)
        usleep(100000);
    int ok = lock(fd, F_SETLK, F_UNLCK, 50, 50) == 0 && lock(fd, F_SETLK, F_WRLCK, 50, 50) == 0;
    snprintf(detail, sizeof detail, "fcntl: %s", strerror(errno));
    result("lock_owner_carries_on", ok, detail);
    ok = flock(flocked, LOCK_SH | LOCK_NB) == 0 && flock(flocked, LOCK_EX | LOCK_NB) == 0;
    snprintf(detail, sizeof detail, "flock: %s", strerror(errno));
    result("flock_carries_on", ok, detail);
    waitpid(waiter, NULL, 0);
    return 0;
}

int main(int argc, char **argv)
{
    char detail[256];
    int rc;
    if (argc == 4 && strcmp(argv[1], "hold") == 0)
        return hold(argv[2], argv[3]);
    if (argc != 2) {
        fprintf(stderr, "usage: lockprobe DIR\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/guest-locks", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    ftruncate(fd, 4096);

    /* POSIX record locks between two guest processes. */
    result("posix_setlk", lock(fd, F_SETLK, F_WRLCK, 0, 100) == 0, strerror(errno));
    int status = in_child(child_conflicts);
    snprintf(detail, sizeof detail, "child check %d", status);
    result("posix_conflict_and_getlk", status == 0, detail);

    /* close() of any descriptor of the file drops the process's locks. */
    int other = open(path, O_RDONLY);
    close(other);
    status = in_child(child_locks_freely);
    snprintf(detail, sizeof detail, "child check %d", status);
    result("posix_released_on_close", status == 0, detail);

    /* A process's exit drops its locks. */
    status = in_child(child_locks_and_exits);
    int after_exit = lock(fd, F_SETLK, F_WRLCK, 0, 0);
    snprintf(detail, sizeof detail, "child %d, parent lock %s", status, strerror(errno));
    result("posix_released_on_exit", status == 0 && after_exit == 0, detail);

    /* F_SETLKW waits while the share keeps serving. */
    int pipefd[2];
    pipe(pipefd);
    pid_t waiter = fork();
    if (waiter == 0) {
        int wfd = open(path, O_RDWR);
        double start = now();
        int rc = lock(wfd, F_SETLKW, F_WRLCK, 0, 1);
        double waited = now() - start;
        write(pipefd[1], &waited, sizeof waited);
        _exit(rc == 0 ? 0 : 1);
    }
    usleep(300000);
    struct stat st;
    double served_at = now();
    int served = stat(argv[1], &st) == 0 && open(path, O_RDONLY) >= 0;
    double serve_time = now() - served_at;
    snprintf(detail, sizeof detail, "served %d in %.3fs", served, serve_time);
    result("setlkw_leaves_the_share_serving", served && serve_time < 0.5, detail);
    usleep(700000);
    lock(fd, F_SETLK, F_UNLCK, 0, 0);
    double waited = 0;
    read(pipefd[0], &waited, sizeof waited);
    waitpid(waiter, &status, 0);
    snprintf(detail, sizeof detail, "status %d waited %.3fs", status, waited);
    result("setlkw_waits_then_gets_the_lock", WIFEXITED(status) && WEXITSTATUS(status) == 0
           && waited > 0.8 && waited < 5, detail);

    /* A wait that would close a cycle of waiting processes fails with EDEADLK. */
    int ready[2];
    pipe(ready);
    lock(fd, F_SETLK, F_WRLCK, 0, 1);
    pid_t cycler = fork();
    if (cycler == 0) {
        int cfd = open(path, O_RDWR);
        lock(cfd, F_SETLK, F_WRLCK, 1, 1);
        write(ready[1], "x", 1);
        _exit(lock(cfd, F_SETLKW, F_WRLCK, 0, 1) == 0 ? 0 : 1);
    }
    char byte;
    read(ready[0], &byte, 1);
    usleep(300000);
    rc = lock(fd, F_SETLKW, F_WRLCK, 1, 1);
    snprintf(detail, sizeof detail, "rc %d: %s", rc, strerror(errno));
    result("posix_deadlock_edeadlk", rc == -1 && errno == EDEADLK, detail);
    lock(fd, F_SETLK, F_UNLCK, 0, 0);
    waitpid(cycler, &status, 0);
    result("posix_deadlock_other_side_proceeds", WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "the other waiter did not get its lock");

    /* flock between two open files. */
    int ffd = open(path, O_RDONLY);
    result("flock_ex", flock(ffd, LOCK_EX | LOCK_NB) == 0, strerror(errno));
    status = in_child(flock_child_blocked);
    snprintf(detail, sizeof detail, "child check %d", status);
    result("flock_conflict", status == 0, detail);
    close(ffd);
    int gfd = open(path, O_RDONLY);
    result("flock_released_on_close", flock(gfd, LOCK_EX | LOCK_NB) == 0, strerror(errno));
    close(gfd);

    /* What the host holds.  "held" means the guest met the host's lock. */
    snprintf(path, sizeof path, "%s/host-locked", argv[1]);
    int hfd = open(path, O_RDWR);
    rc = lock(hfd, F_SETLK, F_WRLCK, 0, 0);
    printf("VALUE host_posix_lock %s\n", rc == 0 ? "free" : "held");
    snprintf(path, sizeof path, "%s/host-flocked", argv[1]);
    int hffd = open(path, O_RDONLY);
    rc = flock(hffd, LOCK_EX | LOCK_NB);
    printf("VALUE host_flock %s\n", rc == 0 ? "free" : "held");
    fflush(stdout);
    return 0;
}
