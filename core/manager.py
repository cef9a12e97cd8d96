"""The plugin manager factory: which plugins a daemon (or a test) runs with, and nothing more.

There is no global manager.  The daemon builds one from its configuration; a test builds one with
exactly the plugins it wants (``load_entry_points=False, plugins=[...]``).

Loading policy (a root daemon must not run code the user did not choose):

- no entry-point group is ever loaded wholesale; each slot loads the one entry point its
  command-line flag names (``--inode-file-handles=never`` loads ``virtiofsd.inode_store:never``);
- third-party plugins enter only through ``-p NAME`` (group ``virtiofsd.plugins``);
- a slot hook must have at most one implementation; two are refused, naming both.
"""

from __future__ import annotations

import inspect
import logging
from importlib import metadata
from typing import Any, Iterable

import pluggy

from virtiofsd import PROJECT_NAME
from virtiofsd.errors import ConfigError
from virtiofsd.hookspecs import spec_modules

log = logging.getLogger(__name__)

GROUP_FS = "virtiofsd.fs"
GROUP_INODE_STORE = "virtiofsd.inode_store"
GROUP_MIGRATION = "virtiofsd.migration"
GROUP_POLICY = "virtiofsd.policy"
GROUP_PLUGINS = "virtiofsd.plugins"

#: Hooks of which a running daemon may have only one implementation.
SLOT_HOOKS = ("virtiofsd_make_inode_store", "virtiofsd_make_migration")


def entry_point_names(group: str) -> list[str]:
    """Names available in an entry-point group (for ``--help`` and argparse choices)."""
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def selected_entry_points(config: Any) -> list[tuple[str, str]]:
    """The ``(group, name)`` pairs a configuration selects, in registration order."""
    selected = [(GROUP_FS, "passthrough"), (GROUP_INODE_STORE, config.inode_file_handles),
                (GROUP_MIGRATION, config.migration_mode)]
    if config.readonly:
        selected.append((GROUP_POLICY, "readonly"))
    if config.xattrmap is not None:
        selected.append((GROUP_POLICY, "xattrmap"))
    selected.extend((GROUP_PLUGINS, name) for name in config.extra_plugins)
    return selected


def load_entry_point(pm: pluggy.PluginManager, group: str, name: str) -> Any:
    """Import exactly one entry point and register it as ``group:name``."""
    matches = list(metadata.entry_points(group=group, name=name))
    if not matches:
        available = ", ".join(entry_point_names(group)) or "none"
        raise ConfigError(f"no plugin named {name!r} in group {group} (available: {available})")
    plugin = matches[0].load()
    _check_registrable(plugin)
    pm.register(plugin, name=f"{group}:{name}")
    log.debug("loaded plugin %s:%s from %s", group, name, matches[0].value)
    return plugin


def _check_registrable(plugin: Any) -> None:
    if inspect.isclass(plugin):
        raise TypeError(f"register an instance or a module, not the class {plugin.__name__}")


def check_slots(pm: pluggy.PluginManager) -> None:
    """Refuse a manager in which a slot hook has more than one implementation."""
    for hook_name in SLOT_HOOKS:
        caller = getattr(pm.hook, hook_name)
        impls = [impl for impl in caller.get_hookimpls() if not (impl.wrapper or impl.hookwrapper)]
        if len(impls) > 1:
            names = ", ".join(impl.plugin_name for impl in impls)
            raise ConfigError(f"slot {hook_name} has several providers: {names}; choose one")


def make_plugin_manager(config: Any = None, *, load_entry_points: bool = True,
                        plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Build a plugin manager with the hook specs, the selected plugins and ``plugins``.

    :param config: the :class:`virtiofsd.config.Config` whose flags select entry points; may be
        ``None`` when ``load_entry_points`` is False.
    :param load_entry_points: load the entry points the configuration selects.
    :param plugins: extra plugin objects (modules or instances) registered after the entry points.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    for module in spec_modules():
        pm.add_hookspecs(module)
    if load_entry_points:
        if config is None:
            raise ValueError("loading entry points needs a configuration")
        for group, name in selected_entry_points(config):
            load_entry_point(pm, group, name)
    for plugin in plugins:
        _check_registrable(plugin)
        pm.register(plugin)
    pm.check_pending()
    check_slots(pm)
    return pm


def resolve_hook(pm: pluggy.PluginManager, hook_name: str) -> Any:
    """The cheapest callable with the semantics of ``pm.hook.<hook_name>(**kwargs)``.

    Per-request hooks are called tens of thousands of times a second, and pluggy's caller walks
    its implementation list for every call.  When a ``firstresult`` hook has exactly one
    implementation, no wrapper, and that implementation takes every argument of the spec, calling
    its function directly returns the same value and raises the same exceptions, so that function
    is returned.  Anything else (several plugins, a wrapper, an implementation taking a subset of
    the arguments, a hook that returns a list) gets the hook caller itself.  Resolve after every
    plugin is registered: a plugin added later is not seen by an already resolved callable.
    """
    caller = getattr(pm.hook, hook_name)
    spec = caller.spec
    impls = caller.get_hookimpls()
    if spec is None or not spec.opts.get("firstresult") or len(impls) != 1:
        return caller
    (impl,) = impls
    if impl.wrapper or impl.hookwrapper or impl.argnames != spec.argnames or impl.kwargnames:
        return caller
    return impl.function
