"""Thin bindings to the operating system calls Python's ``os`` module lacks or gets wrong.

- :mod:`.ffi`: the one cffi module (ABI mode over the C library already in the process): raw
  per-thread ``setresuid``/``setresgid``/``setgroups``, ``getdents64``, ``syncfs``,
  ``renameat2``, ``fchownat``, ``fallocate``, ``utimensat``, ``futimens``.  Every failure is an
  ``OSError`` carrying the errno and the call with its arguments.
- :mod:`.credentials`: a context manager that switches the calling thread's effective uid and
  gid, and only that thread's.
- :mod:`.dirents64`: a pure parser of the ``linux_dirent64`` records ``getdents64`` fills in.
"""
