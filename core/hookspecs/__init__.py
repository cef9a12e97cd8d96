"""Every hook specification of virtiofsd, one module per concern.

- :mod:`.lifecycle`: configure and unconfigure the daemon's plugins.
- :mod:`.fuse_ops`: one first-result hook per FUSE opcode.
- :mod:`.inode_store`: the slot hook that chooses how inodes are held (``--inode-file-handles``).
- :mod:`.xattr`: extended-attribute name mapping (``--xattrmap``).
- :mod:`.migration`: the slot hook for ``--migration-mode``.
- :mod:`.sandbox`: the system calls and capabilities a plugin needs kept.

Every hook name starts with ``virtiofsd_``.  Plugins mark implementations with
:data:`virtiofsd.hookimpl`; the spec marker stays here.
"""

from __future__ import annotations

import pluggy

from virtiofsd import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


def spec_modules() -> list:
    """The modules the plugin manager factory adds as hook specifications."""
    from virtiofsd.hookspecs import fuse_ops, inode_store, lifecycle, migration, sandbox, xattr

    return [lifecycle, fuse_ops, inode_store, xattr, migration, sandbox]
