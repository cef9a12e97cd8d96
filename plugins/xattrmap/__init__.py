"""``--xattrmap``: the extended-attribute name mapping policy.

:mod:`.rules` parses the rule language and matches names (sans-IO, no system call);
:mod:`.plugin` is the entry point ``xattrmap`` (group ``virtiofsd.policy``) that answers the
mapping hooks of :mod:`virtiofsd.hookspecs.xattr` with it.
"""
