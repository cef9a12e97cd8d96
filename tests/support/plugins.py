"""A third-party plugin package, as pip would install it, for tests that load one by ``--plugin``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def install_plugin_package(site: Path, module: str, source: str,
                           entry_points: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write ``module`` (``source``) and a dist-info declaring ``entry_points`` (name -> object
    reference) in the group virtiofsd.plugins under ``site``, and put ``site`` on the daemon's
    PYTHONPATH."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\n"
                                   "Version: 1.0\n")
    lines = "".join(f"{name} = {reference}\n" for name, reference in entry_points.items())
    (info / "entry_points.txt").write_text("[virtiofsd.plugins]\n" + lines)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return site
