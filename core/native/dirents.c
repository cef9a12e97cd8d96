/*
 * linux_dirent64 -> fuse_dirent, the per-entry loop of READDIR without the interpreter.  The
 * Python version (virtiofsd.sys.dirents64 + virtiofsd.fuse.dirents) stays the reference: the
 * tests compare the two byte for byte.
 *
 *   linux_dirent64: u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]  (native order)
 *   fuse_dirent:    u64 ino; u64 off; u32 namelen; u32 type; char name[]  (little-endian,
 *                   the record NUL-padded to a multiple of 8 bytes)
 *
 * The kernel writes each name and its NUL but not the padding after it, so a name ends at its
 * first NUL (or at the end of its record).  A record shorter than its header, or running past
 * the input, stops the conversion.  Sans-IO: no system call.
 */

#include <stdint.h>
#include <string.h>

#include "dirents.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "fuse_dirent is little-endian and written here in native order");

#define HOST_HEADER 19u   /* d_ino 8, d_off 8, d_reclen 2, d_type 1 */
#define FUSE_HEADER 24u   /* ino 8, off 8, namelen 4, type 4 */

int vfs_pack_dirents(const uint8_t *in, uint64_t in_length, uint8_t *out, uint64_t out_length,
                     uint64_t *consumed, uint64_t *produced, uint64_t *needed)
{
    uint64_t position = 0, used = 0;
    int status = VFS_DIRENTS_DONE;
    *needed = 0;
    while (position < in_length) {
        if (in_length - position < HOST_HEADER) {
            status = VFS_DIRENTS_BAD;
            break;
        }
        const uint8_t *record = in + position;
        uint64_t ino, off;
        uint16_t reclen;
        memcpy(&ino, record, 8);
        memcpy(&off, record + 8, 8);
        memcpy(&reclen, record + 16, 2);
        uint8_t type = record[18];
        if (reclen <= HOST_HEADER || reclen > in_length - position) {
            status = VFS_DIRENTS_BAD;
            break;
        }
        const uint8_t *name = record + HOST_HEADER;
        const uint8_t *nul = memchr(name, 0, reclen - HOST_HEADER);
        uint32_t namelen = nul ? (uint32_t)(nul - name) : reclen - HOST_HEADER;
        uint64_t size = (FUSE_HEADER + namelen + 7u) & ~(uint64_t)7u;
        if (size > out_length - used) {
            *needed = size;
            status = VFS_DIRENTS_FULL;
            break;
        }
        uint8_t *target = out + used;
        uint32_t type32 = type;
        memcpy(target, &ino, 8);
        memcpy(target + 8, &off, 8);
        memcpy(target + 16, &namelen, 4);
        memcpy(target + 20, &type32, 4);
        memcpy(target + FUSE_HEADER, name, namelen);
        memset(target + FUSE_HEADER + namelen, 0, size - FUSE_HEADER - namelen);
        used += size;
        position += reclen;
    }
    *consumed = position;
    *produced = used;
    return status;
}
