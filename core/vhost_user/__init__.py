"""The vhost-user control plane: message formats and the back-end state machine, without I/O.

:mod:`~virtiofsd.vhost_user.messages` is shared by both peers (the daemon and the test
front-end); :mod:`~virtiofsd.vhost_user.backend` is the device's state machine.  Sockets,
eventfds and threads live in :mod:`virtiofsd.io`.
"""
