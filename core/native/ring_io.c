/*
 * The system-call side of the compiled ring: the worker's wait for a kick.  split_ring.c stays
 * free of system calls.
 *
 * Called through cffi, which releases the GIL for the call: a worker waiting in poll lets the
 * other threads run.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "split_ring.h"

/* Reset an eventfd counter after poll said it is readable (EAGAIN: a spurious wake-up). */
static void consume_eventfd(int fd)
{
    uint64_t value;
    ssize_t got;
    do {
        got = read(fd, &value, sizeof value);
    } while (got < 0 && errno == EINTR);
}

static void lock_call_fd(struct vfs_ring *ring)
{
    while (__atomic_exchange_n(&ring->call_lock, 1, __ATOMIC_ACQUIRE))
        sched_yield();
}

static void unlock_call_fd(struct vfs_ring *ring)
{
    __atomic_store_n(&ring->call_lock, 0, __ATOMIC_RELEASE);
}

/*
 * The control plane replaces the call eventfd while the worker runs (QEMU does when it masks
 * the guest's interrupts) and closes the old one afterwards: once this returns, no signal goes
 * to the old descriptor, which may then be closed (and its number reused) safely.
 */
void vfs_ring_set_call_fd(struct vfs_ring *ring, int fd)
{
    lock_call_fd(ring);
    ring->call_fd = fd;
    unlock_call_fd(ring);
}

static void signal_call(struct vfs_ring *ring)
{
    static const uint64_t one = 1;
    lock_call_fd(ring);
    if (ring->call_fd >= 0) {
        ssize_t put;
        do {
            put = write(ring->call_fd, &one, sizeof one);
        } while (put < 0 && errno == EINTR);
    }
    unlock_call_fd(ring);
}

/*
 * Drain-notify-sleep, the loop of virtiofsd.io.daemon.QueueWorker without the interpreter:
 * return the next chain; when none is left, signal the call eventfd if the driver asked for it
 * (ring->call_fd, see vfs_ring_set_call_fd), re-enable kicks, look once more (a chain published
 * in between gets no kick of its own), and sleep until the kick or the wake eventfd fires.  Another thread that sets ring->interrupted (a new memory table to
 * follow before the next walk) gets VFS_WOKEN back before the next pop.  With a thread pool the
 * completions decide notifications (under their lock), and ``notify`` is 0.
 */
int vfs_ring_next(struct vfs_ring *ring, const struct vfs_memory *memory, struct vfs_chain *chain,
                  int kick_fd, int wake_fd, int notify)
{
    for (;;) {
        if (__atomic_exchange_n(&ring->interrupted, 0, __ATOMIC_ACQ_REL))
            return VFS_WOKEN;
        int status = vfs_ring_pop(ring, memory, chain);
        if (status != VFS_EMPTY)
            return status;
        if (notify && vfs_ring_needs_notification(ring))
            signal_call(ring);
        if (vfs_ring_enable_notifications(ring)) {
            vfs_ring_disable_notifications(ring);
            continue;
        }
        struct pollfd fds[2] = { { kick_fd, POLLIN, 0 }, { wake_fd, POLLIN, 0 } };
        int ready = poll(fds, 2, -1);
        vfs_ring_disable_notifications(ring);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            snprintf(chain->error, sizeof chain->error, "poll: %s", strerror(errno));
            return VFS_POLL_ERROR;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].revents & (POLLERR | POLLNVAL)) {
                snprintf(chain->error, sizeof chain->error,
                         "poll reports an error on fd %d (events %#x)", fds[i].fd,
                         (unsigned)fds[i].revents);
                return VFS_POLL_ERROR;
            }
        }
        if (fds[0].revents & POLLIN)
            consume_eventfd(kick_fd);
        if (fds[1].revents & POLLIN) {
            consume_eventfd(wake_fd);
            return VFS_WOKEN;
        }
    }
}
