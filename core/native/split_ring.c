/*
 * The device side of a split virtqueue, compiled: the per-request ring work of
 * virtiofsd.virtio.split_queue and virtiofsd.virtio.chain, without the interpreter.
 *
 * Sans-IO: nothing here makes a system call.  The rules are those of the Python modules, which
 * stay the reference (their docstrings say why each rule exists); the test suite runs the same
 * cases, and the fuzzer the same random rings, against both.
 *
 * Hostile memory.  The driver may rewrite the rings and descriptor tables while we read them.
 * Every descriptor is loaded once (load_descriptor), every decision is taken on that copy, and
 * ring indices are loaded once per use.  Walks are bounded by the table length, so a loop in the
 * "next" links ends as an error.  Every buffer must lie inside guest memory.
 *
 * Ordering.  The avail index is loaded with acquire semantics before the ring entries it
 * publishes; the used element is stored before the used index, which is stored with release
 * semantics; "publish, then read the other side's event index" needs a full fence.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "split_ring.h"

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define DESC_F_INDIRECT 4u
#define AVAIL_F_NO_INTERRUPT 1u
#define USED_F_NO_NOTIFY 1u
#define DESCRIPTOR_SIZE 16u

struct descriptor {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One copy of a descriptor that the guest cannot change under us. */
static struct descriptor load_descriptor(const uint8_t *table, uint32_t index)
{
    const volatile uint8_t *source = table + (size_t)index * DESCRIPTOR_SIZE;
    uint8_t raw[DESCRIPTOR_SIZE];
    struct descriptor d;
    for (unsigned i = 0; i < DESCRIPTOR_SIZE; i++)
        raw[i] = source[i];
    memcpy(&d.addr, raw, 8);
    memcpy(&d.len, raw + 8, 4);
    memcpy(&d.flags, raw + 12, 2);
    memcpy(&d.next, raw + 14, 2);
    return d;
}

static uint16_t load16(const uint16_t *field)
{
    return __atomic_load_n(field, __ATOMIC_ACQUIRE);
}

static void store16(uint16_t *field, uint16_t value)
{
    __atomic_store_n(field, value, __ATOMIC_RELEASE);
}

/* The region holding gpa, or -1; starts from the region of the previous buffer. */
static int64_t find_region(const struct vfs_memory *memory, uint64_t gpa, int64_t hint)
{
    if (hint >= 0 && (uint64_t)hint < memory->count) {
        const struct vfs_region *region = &memory->regions[hint];
        if (gpa >= region->gpa && gpa - region->gpa < region->size)
            return hint;
    }
    uint32_t low = 0, high = memory->count;
    while (low < high) {
        uint32_t middle = low + (high - low) / 2;
        const struct vfs_region *region = &memory->regions[middle];
        if (gpa < region->gpa)
            high = middle;
        else if (gpa - region->gpa >= region->size)
            low = middle + 1;
        else
            return middle;
    }
    return -1;
}

/* The host address of [gpa, gpa + length) when one region holds all of it, else NULL. */
static uint8_t *translate(const struct vfs_memory *memory, uint64_t gpa, uint64_t length)
{
    int64_t position = find_region(memory, gpa, -1);
    if (position < 0)
        return NULL;
    const struct vfs_region *region = &memory->regions[position];
    uint64_t offset = gpa - region->gpa;
    if (length > region->size - offset)
        return NULL;
    return region->host + offset;
}

struct walk {
    struct vfs_chain *chain;
    const struct vfs_memory *memory;
    int64_t region_hint;
};

/*
 * Append [gpa, gpa + length) to the chain's buffers, split where it crosses from one region
 * into the adjacent one, merged into the previous buffer where it continues it (same direction,
 * same region, contiguous): a request split page by page over contiguous guest memory becomes
 * one buffer.  0 on success, -1 (message set) when the range is not guest memory or the chain
 * has more pieces than it has room for.  ``index`` is the descriptor's, for the message.
 */
static int add_buffer(struct walk *walk, uint32_t index, uint64_t gpa, uint64_t length,
                      int writable)
{
    struct vfs_chain *chain = walk->chain;
    if (length > UINT64_MAX - gpa) {
        snprintf(chain->error, sizeof chain->error,
                 "chain %u, descriptor %u: guest range 0x%llx+0x%llx is not backed by guest "
                 "memory (it overflows the address space)", (unsigned)chain->head, index, (unsigned long long)gpa,
                 (unsigned long long)length);
        return -1;
    }
    while (length) {
        int64_t position = find_region(walk->memory, gpa, walk->region_hint);
        if (position < 0) {
            snprintf(chain->error, sizeof chain->error,
                     "chain %u, descriptor %u: guest range 0x%llx+0x%llx is not backed by "
                     "guest memory", (unsigned)chain->head, index, (unsigned long long)gpa,
                     (unsigned long long)length);
            return -1;
        }
        walk->region_hint = position;
        const struct vfs_region *region = &walk->memory->regions[position];
        uint64_t offset = gpa - region->gpa;
        uint64_t piece = region->size - offset;
        if (piece > length)
            piece = length;
        uint32_t count = chain->readable + chain->writable;
        struct vfs_buffer *last = count ? &chain->buffers[count - 1] : NULL;
        int same_direction = last && (writable ? chain->writable > 0 : chain->writable == 0);
        if (same_direction && last->region == (uint32_t)position
                && last->offset + last->length == offset
                && (uint64_t)last->length + piece <= UINT32_MAX) {
            last->length += (uint32_t)piece;
        } else {
            if (count == chain->capacity) {
                snprintf(chain->error, sizeof chain->error,
                         "chain %u: more than %u buffers", (unsigned)chain->head, (unsigned)chain->capacity);
                return -1;
            }
            struct vfs_buffer *buffer = &chain->buffers[count];
            buffer->region = (uint32_t)position;
            buffer->offset = offset;
            buffer->length = (uint32_t)piece;
            buffer->host = region->host + offset;
            if (writable)
                chain->writable++;
            else
                chain->readable++;
        }
        gpa += piece;
        length -= piece;
    }
    return 0;
}

/* Validate an INDIRECT descriptor; its table's host address, or NULL (message set). */
static const uint8_t *indirect_table(struct walk *walk, const struct vfs_ring *ring,
                                     uint32_t index, struct descriptor d, int in_indirect)
{
    struct vfs_chain *chain = walk->chain;
    const char *problem = NULL;
    char text[120];
    if (in_indirect)
        problem = "an indirect table contains another indirect descriptor";
    else if (!ring->indirect)
        problem = "indirect descriptor used but VIRTIO_F_RING_INDIRECT_DESC was not negotiated";
    else if (d.flags & DESC_F_NEXT)
        problem = "indirect descriptor also has the NEXT flag";
    else if (d.len == 0 || d.len % DESCRIPTOR_SIZE) {
        snprintf(text, sizeof text,
                 "indirect table length %u is not a non-zero multiple of 16", d.len);
        problem = text;
    } else if (d.len / DESCRIPTOR_SIZE > ring->size) {
        snprintf(text, sizeof text,
                 "indirect table of %u descriptors exceeds the queue size %u",
                 d.len / DESCRIPTOR_SIZE, ring->size);
        problem = text;
    }
    if (problem) {
        snprintf(chain->error, sizeof chain->error, "chain %u, descriptor %u: %s",
                 (unsigned)chain->head, index, problem);
        return NULL;
    }
    const uint8_t *table = translate(walk->memory, d.addr, d.len);
    if (!table)
        snprintf(chain->error, sizeof chain->error,
                 "chain %u, descriptor %u: indirect table: guest range 0x%llx+0x%x is not "
                 "backed by guest memory", (unsigned)chain->head, index,
                 (unsigned long long)d.addr, d.len);
    return table;
}

static int walk_chain(const struct vfs_ring *ring, const struct vfs_memory *memory,
                      struct vfs_chain *chain)
{
    struct walk walk = { chain, memory, -1 };
    const uint8_t *table = ring->desc;
    uint32_t table_length = ring->size;
    uint32_t index = chain->head;
    uint32_t visited = 0;
    int in_indirect = 0;
    int writing = 0;
    for (;;) {
        if (visited == table_length) {
            snprintf(chain->error, sizeof chain->error,
                     "chain %u: %s has more than %u descriptors (a loop?)", (unsigned)chain->head,
                     in_indirect ? "indirect table" : "descriptor chain", table_length);
            return VFS_INVALID_CHAIN;
        }
        visited++;
        struct descriptor d = load_descriptor(table, index);
        if (d.flags & DESC_F_INDIRECT) {
            table = indirect_table(&walk, ring, index, d, in_indirect);
            if (!table)
                return VFS_INVALID_CHAIN;
            table_length = d.len / DESCRIPTOR_SIZE;
            in_indirect = 1;
            visited = 0;
            index = 0;
            continue;
        }
        if (d.flags & DESC_F_WRITE) {
            writing = 1;
            chain->writable_bytes += d.len;
        } else if (writing) {
            snprintf(chain->error, sizeof chain->error,
                     "chain %u: device-readable descriptor %u follows a device-writable one",
                     (unsigned)chain->head, index);
            return VFS_INVALID_CHAIN;
        } else {
            chain->readable_bytes += d.len;
        }
        if (d.len && add_buffer(&walk, index, d.addr, d.len, writing) < 0)
            return VFS_INVALID_CHAIN;
        if (!(d.flags & DESC_F_NEXT))
            return VFS_CHAIN;
        if (d.next >= table_length) {
            snprintf(chain->error, sizeof chain->error,
                     "chain %u: descriptor %u links to %u, outside a table of %u",
                     (unsigned)chain->head, index, d.next, table_length);
            return VFS_INVALID_CHAIN;
        }
        index = d.next;
    }
}

/* Copy the readable bytes into chain->copy when they fit (see struct vfs_chain). */
static void copy_request(struct vfs_chain *chain)
{
    chain->copied = 0;
    if (chain->readable_bytes > chain->copy_capacity)
        return;
    uint8_t *out = chain->copy;
    for (uint64_t i = 0; i < chain->readable; i++) {
        const struct vfs_buffer *buffer = &chain->buffers[i];
        memcpy(out, buffer->host, buffer->length);
        out += buffer->length;
    }
    chain->copied = chain->readable_bytes;
}

int vfs_ring_pop(struct vfs_ring *ring, const struct vfs_memory *memory, struct vfs_chain *chain)
{
    chain->copied = 0;
    chain->readable = chain->writable = 0;
    chain->readable_bytes = chain->writable_bytes = 0;
    chain->head = VFS_NO_HEAD;
    chain->error[0] = 0;
    uint16_t last = ring->last_avail;
    if (last == ring->avail_idx) {
        uint16_t avail_idx = load16(&ring->avail[1]);
        uint16_t pending = (uint16_t)(avail_idx - last);
        if (!pending)
            return VFS_EMPTY;
        if (pending > ring->size) {
            snprintf(chain->error, sizeof chain->error,
                     "available index %u is %u entries ahead of the next entry %u, more than "
                     "the queue size %u", avail_idx, pending, last, ring->size);
            return VFS_RING_BROKEN;
        }
        ring->avail_idx = avail_idx;
    }
    uint16_t head = load16(&ring->avail[2 + (last & ring->mask)]);
    ring->last_avail = (uint16_t)(last + 1);
    if (head >= ring->size) {
        snprintf(chain->error, sizeof chain->error,
                 "available entry %u names descriptor %u, queue size %u", last, head, ring->size);
        return VFS_INVALID_CHAIN;
    }
    chain->head = head;
    int status = walk_chain(ring, memory, chain);
    if (status == VFS_CHAIN)
        copy_request(chain);
    return status;
}

uint32_t vfs_ring_known_available(const struct vfs_ring *ring)
{
    return (uint16_t)(ring->avail_idx - ring->last_avail);
}

int vfs_ring_push_used(struct vfs_ring *ring, uint32_t head, uint64_t written)
{
    if (head >= ring->size || written > UINT32_MAX)
        return -1;
    uint16_t idx = ring->used_idx;
    uint32_t *element = (uint32_t *)(ring->used + 4 + 8 * (size_t)(idx & ring->mask));
    __atomic_store_n(&element[0], head, __ATOMIC_RELAXED);
    __atomic_store_n(&element[1], (uint32_t)written, __ATOMIC_RELAXED);
    idx++;
    store16((uint16_t *)(ring->used + 2), idx);
    ring->used_idx = idx;
    return 0;
}

int vfs_ring_needs_notification(struct vfs_ring *ring)
{
    uint16_t new_idx = ring->used_idx;
    uint16_t old_idx = ring->signalled_used;
    if (new_idx == old_idx)
        return 0;
    int valid = ring->signalled_valid;
    ring->signalled_used = new_idx;
    ring->signalled_valid = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (ring->event_idx) {
        uint16_t used_event = load16(&ring->avail[2 + ring->size]);
        return !valid || (uint16_t)(new_idx - used_event - 1) < (uint16_t)(new_idx - old_idx);
    }
    return !(load16(&ring->avail[0]) & AVAIL_F_NO_INTERRUPT);
}

void vfs_ring_disable_notifications(struct vfs_ring *ring)
{
    if (!ring->event_idx)
        store16((uint16_t *)ring->used, USED_F_NO_NOTIFY);
}

int vfs_ring_enable_notifications(struct vfs_ring *ring)
{
    if (ring->event_idx)
        store16((uint16_t *)(ring->used + 4 + 8 * (size_t)ring->size), ring->last_avail);
    else
        store16((uint16_t *)ring->used, 0);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return load16(&ring->avail[1]) != ring->last_avail;
}

/*
 * Complete a walked chain with a reply given as two pieces (a header and a body, either may be
 * empty) and in_place bytes the caller already wrote after them (a READ's data): copy the
 * pieces, in order, across the chain's writable buffers and put the chain on the used ring
 * with the total length.  A total beyond the writable buffers writes nothing and completes
 * the chain with 0 (the caller checks the room first; a chain with no room even for a header
 * gets nothing).  Returns the length completed with, or -1 for a head the ring cannot take
 * (nothing written).
 */
int64_t vfs_ring_complete(struct vfs_ring *ring, const struct vfs_chain *chain,
                          const char *header, uint64_t header_length, const char *body,
                          uint64_t body_length, uint64_t in_place)
{
    if (chain->head >= ring->size)
        return -1;
    uint64_t pieces = header_length + body_length;
    uint64_t total = pieces + in_place;
    if (pieces < header_length || total < pieces || total > chain->writable_bytes
            || total > UINT32_MAX)
        total = pieces = 0;
    const char *source = header;
    uint64_t left = header_length;
    uint64_t remaining = pieces;
    for (uint64_t i = chain->readable; remaining && i < chain->readable + chain->writable; i++) {
        const struct vfs_buffer *buffer = &chain->buffers[i];
        uint8_t *out = buffer->host;
        uint64_t room = buffer->length;
        while (room && remaining) {
            if (!left) {
                source = body;
                left = body_length;
            }
            uint64_t piece = left < room ? left : room;
            memcpy(out, source, piece);
            out += piece;
            room -= piece;
            source += piece;
            left -= piece;
            remaining -= piece;
        }
    }
    vfs_ring_push_used(ring, (uint32_t)chain->head, total);
    return (int64_t)total;
}
