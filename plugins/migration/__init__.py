"""Live migration (``--migration-mode``): the device-state format and the two strategies that
locate inodes for the destination (entry points ``find-paths`` and ``file-handles``)."""
