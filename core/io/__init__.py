"""The only place with sockets, eventfds, poll and threads.

:mod:`~virtiofsd.io.unix_socket` listens, accepts and moves messages with their file
descriptors; :mod:`~virtiofsd.io.daemon` runs one connection: the control plane on the calling
thread and one worker thread per started virtqueue.
"""
