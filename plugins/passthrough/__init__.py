"""The passthrough file system: every FUSE operation replayed on a host folder.

Entry point ``passthrough`` (group ``virtiofsd.fs``) is :mod:`.plugin`, a thin bootstrap whose
configure hook builds :class:`.state.PassthroughState` and registers the operation objects:
:class:`.entry_ops.EntryOps` (names and attributes), :class:`.dir_ops.DirOps` (creating,
removing, folders) and :class:`.file_ops.FileOps` (open files).  :mod:`.readonly` is the
``--readonly`` policy wrapped around them.

The design follows the Rust virtiofsd: inodes are O_PATH descriptors opened one name at a time
relative to their parent's descriptor, never paths; an inode is reopened for I/O through
``/proc/self/fd/N`` only when it is a regular file or a folder; creation runs as the guest caller.
"""
