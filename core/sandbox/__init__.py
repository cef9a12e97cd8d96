"""Sandbox and least privilege: what a compromised daemon can still reach and do.

The service applies the steps in this order (see :mod:`virtiofsd.service`):

1. :func:`~.isolation.enter_sandbox` (``--sandbox``): the namespace sandbox forks a child that
   sees only the shared folder as ``/`` (new mount, pid and net namespaces, plus a user
   namespace when not root) while the parent waits with no capability; ``chroot`` only changes
   the root; ``none`` changes nothing.
2. The plugins configure themselves inside it (they open ``/``, the shared folder).
3. :func:`~.capabilities.drop_capabilities` keeps only the capabilities a file server needs
   (``--modcaps`` adjusts them) in the effective and permitted sets, and empties the
   inheritable and bounding sets.
4. :func:`~.seccomp.apply_seccomp` (``--seccomp``) loads the system-call allow-list for every
   thread, before the worker threads exist.

:mod:`.procfs` keeps the two ``/proc`` descriptors the sandbox opens before ``/proc`` disappears
from view (the fd folder and ``mountinfo``) for the plugins that need them.
"""

from virtiofsd.sandbox.procfs import open_proc_self_fd, read_mountinfo

__all__ = ["open_proc_self_fd", "read_mountinfo"]
