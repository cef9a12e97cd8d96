/*
 * The compiled split virtqueue (split_ring.c) and the wait on its eventfds (ring_io.c).
 * These declarations are also given to cffi (core/native/build.py reads this file), so they
 * stay within what cffi's parser accepts: no macros with arguments, no includes.
 */

/* Results of vfs_ring_pop and vfs_ring_next. */
#define VFS_CHAIN 1           /* a chain was popped into the vfs_chain */
#define VFS_EMPTY 0           /* the driver published nothing more */
#define VFS_WOKEN 3           /* vfs_ring_next: the wake eventfd fired */
#define VFS_INVALID_CHAIN -1  /* the entry was consumed; complete head (if not VFS_NO_HEAD) with 0 */
#define VFS_RING_BROKEN -2    /* the avail index is impossible: wait for the next kick */
#define VFS_POLL_ERROR -3     /* vfs_ring_next: poll failed or reported an error; see error */
#define VFS_NO_HEAD 65535

/* One mapped region of guest memory; the table is sorted by gpa and has no overlaps. */
struct vfs_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};

struct vfs_memory {
    uint64_t count;
    struct vfs_region *regions;
};

/* One buffer of a chain: host address, offset inside its region, length, region index. */
struct vfs_buffer {
    uint8_t *host;
    uint64_t offset;
    uint32_t length;
    uint32_t region;
};

/* A walked chain: readable buffers first, then writable ones.  The counters come first and
 * are all u64, so Python reads them through one integer view.  When the readable bytes fit in
 * copy_capacity, they are also copied, in order, to copy (copied = their number, else 0): a
 * small request is then one contiguous snapshot the guest can no longer change. */
struct vfs_chain {
    uint64_t head;
    uint64_t readable;
    uint64_t writable;
    uint64_t readable_bytes;
    uint64_t writable_bytes;
    uint64_t capacity;
    uint64_t copied;
    uint64_t copy_capacity;
    uint8_t *copy;
    struct vfs_buffer *buffers;
    char error[256];
};

/* Host addresses of the three ring areas and the device's indices. */
struct vfs_ring {
    uint32_t size;
    uint32_t mask;
    const uint8_t *desc;
    uint16_t *avail;
    uint8_t *used;
    uint16_t last_avail;
    uint16_t avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;
    uint8_t signalled_valid;
    uint8_t event_idx;
    uint8_t indirect;
    uint8_t interrupted;  /* set by another thread: vfs_ring_next returns VFS_WOKEN first */
    int32_t call_fd;      /* the call eventfd vfs_ring_next signals (-1: none); see ring_io.c */
    uint32_t call_lock;   /* held while call_fd is written to or replaced */
};

int vfs_ring_pop(struct vfs_ring *ring, const struct vfs_memory *memory, struct vfs_chain *chain);
uint32_t vfs_ring_known_available(const struct vfs_ring *ring);
int vfs_ring_push_used(struct vfs_ring *ring, uint32_t head, uint64_t written);
int64_t vfs_ring_complete(struct vfs_ring *ring, const struct vfs_chain *chain,
                          const char *header, uint64_t header_length, const char *body,
                          uint64_t body_length, uint64_t in_place);
int vfs_ring_needs_notification(struct vfs_ring *ring);
void vfs_ring_disable_notifications(struct vfs_ring *ring);
int vfs_ring_enable_notifications(struct vfs_ring *ring);

int vfs_ring_next(struct vfs_ring *ring, const struct vfs_memory *memory, struct vfs_chain *chain,
                  int kick_fd, int wake_fd, int notify);
void vfs_ring_set_call_fd(struct vfs_ring *ring, int fd);
