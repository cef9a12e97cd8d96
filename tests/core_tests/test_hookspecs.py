"""The hook specifications are the plugin authors' documentation: every one must read as such."""

from __future__ import annotations

import inspect

import pytest

from virtiofsd import PROJECT_NAME
from virtiofsd.hookspecs import fuse_ops, spec_modules
from virtiofsd.manager import make_plugin_manager

SPEC_MARK = PROJECT_NAME + "_spec"


def all_specs():
    for module in spec_modules():
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if hasattr(function, SPEC_MARK):
                yield module, name, function


SPECS = list(all_specs())


def test_there_are_specs_in_every_module():
    assert {module for module, _name, _function in SPECS} == set(spec_modules())


@pytest.mark.parametrize("module,name,function", SPECS, ids=[s[1] for s in SPECS])
def test_every_spec_is_prefixed_and_documented(module, name, function):
    assert name.startswith("virtiofsd_")
    doc = inspect.getdoc(function)
    assert doc and len(doc) > 20, f"{module.__name__}.{name} has no real docstring"


@pytest.mark.parametrize("module", spec_modules(), ids=lambda module: module.__name__)
def test_every_spec_module_is_documented(module):
    assert inspect.getdoc(module)


def test_every_fuse_op_is_a_first_result_hook_with_a_request():
    pm = make_plugin_manager(load_entry_points=False)
    fuse_specs = [name for spec_module, name, _f in SPECS if spec_module is fuse_ops]
    assert len(fuse_specs) > 30
    for name in fuse_specs:
        spec = getattr(pm.hook, name).spec
        assert spec.opts["firstresult"], name
        assert spec.argnames[0] == "req", name
