"""The in-tree plugins of virtiofsd, importable as ``virtiofsd_plugins``.

Each is loaded through its entry point (see ``pyproject.toml``) exactly like a third-party plugin:
``passthrough`` (the file system), ``inode_handles`` (the ``--inode-file-handles`` strategies),
``migration`` (the ``--migration-mode`` strategies).
"""
