"""The plugin manager factory: selected entry points only, one provider per slot, no globals."""

from __future__ import annotations

import sys

import pytest

from virtiofsd import hookimpl
from virtiofsd.config import Config
from virtiofsd.errors import ConfigError
from virtiofsd.manager import (GROUP_INODE_STORE, load_entry_point, make_plugin_manager,
                               selected_entry_points)


class FakeStore:
    def __init__(self, tag):
        self.tag = tag

    @hookimpl
    def virtiofsd_make_inode_store(self, config):
        return self.tag


def test_a_test_builds_a_manager_with_exactly_its_plugins():
    pm = make_plugin_manager(load_entry_points=False, plugins=[FakeStore("fake")])
    assert pm.hook.virtiofsd_make_inode_store(config=None) == "fake"
    assert make_plugin_manager(load_entry_points=False).hook.virtiofsd_make_inode_store(
        config=None) is None


def test_two_providers_of_a_slot_are_refused():
    with pytest.raises(ConfigError, match="several providers"):
        make_plugin_manager(load_entry_points=False, plugins=[FakeStore("a"), FakeStore("b")])


def test_plugin_classes_are_refused():
    with pytest.raises(TypeError, match="instance or a module"):
        make_plugin_manager(load_entry_points=False, plugins=[FakeStore])


def test_misspelt_hook_fails_loudly():
    class Misspelt:
        @hookimpl
        def virtiofsd_fuse_lookpu(self, req, parent, name):
            return None

    with pytest.raises(Exception, match="virtiofsd_fuse_lookpu"):
        make_plugin_manager(load_entry_points=False, plugins=[Misspelt()])


def test_configuration_selects_entry_points_by_name(tmp_path):
    config = Config(shared_dir=str(tmp_path), readonly=True, inode_file_handles="never")
    assert selected_entry_points(config) == [
        ("virtiofsd.fs", "passthrough"), ("virtiofsd.inode_store", "never"),
        ("virtiofsd.migration", "find-paths"), ("virtiofsd.policy", "readonly")]


def test_loading_one_entry_point_registers_it_under_its_qualified_name():
    pm = make_plugin_manager(load_entry_points=False)
    load_entry_point(pm, GROUP_INODE_STORE, "never")
    assert pm.has_plugin("virtiofsd.inode_store:never")
    assert "virtiofsd_plugins.inode_handles.mandatory" not in sys.modules


def test_unknown_entry_point_names_the_installed_ones():
    pm = make_plugin_manager(load_entry_points=False)
    with pytest.raises(ConfigError, match="available: mandatory, never, prefer"):
        load_entry_point(pm, GROUP_INODE_STORE, "nonsense")
