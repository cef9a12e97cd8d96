"""virtiofsd: a virtio-fs vhost-user backend daemon whose every policy is a pluggy plugin.

The import of this package has no side effects: no plugin is loaded and no manager exists until
``virtiofsd.manager.make_plugin_manager`` builds one.  Plugins mark their hook implementations with
:data:`hookimpl`; the hook specifications live in :mod:`virtiofsd.hookspecs`.
"""

from __future__ import annotations

import pluggy

from virtiofsd.errors import FuseError

PROJECT_NAME = "virtiofsd"
__version__ = "0.1.0"

#: The marker every plugin uses for its hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["FuseError", "PROJECT_NAME", "__version__", "hookimpl"]
