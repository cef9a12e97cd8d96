/*
 * READDIR's record conversion (dirents.c): linux_dirent64 records, as getdents64 writes them,
 * to fuse_dirent records, as the guest reads them.  Given to cffi too (core/native/build.py).
 */

#define VFS_DIRENTS_DONE 0      /* every input record was converted */
#define VFS_DIRENTS_FULL 1      /* the next record does not fit the output; *needed says its size */
#define VFS_DIRENTS_BAD -1      /* the record at *consumed has an impossible length */

int vfs_pack_dirents(const uint8_t *in, uint64_t in_length, uint8_t *out, uint64_t out_length,
                     uint64_t *consumed, uint64_t *produced, uint64_t *needed);
