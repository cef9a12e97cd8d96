"""Running our daemon as an ordinary host user, for the tests of the unprivileged recipes.

The test environment's interpreter and packages often live where an ordinary user cannot read
them (pyenv under /root, a virtualenv inside a 0700 temporary clone), so :func:`daemon_tree`
copies what the daemon imports (this checkout's two packages, their distribution metadata with
the plugin entry points, and the four runtime dependencies) into a world-readable folder that
the system's own ``python3`` (same minor version, so the compiled extensions load) can run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

#: Modules the daemon imports at run time, beyond the standard library.
RUNTIME_MODULES = ("pluggy", "cffi", "_cffi_backend", "pycparser", "prctl", "_prctl", "pyseccomp")
DISTRIBUTION = "pyvirtiofsd"
SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")


def ordinary_user(name: str = "vfs-unpriv") -> pwd.struct_passwd:
    """The host user the daemon runs as, created (no home, no login) when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "--user-group", name], check=True,
                       capture_output=True)
        return pwd.getpwnam(name)


def system_python() -> pathlib.Path:
    """``/usr/bin/python3`` when it is the test interpreter's minor version; skips otherwise."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    if version != str(tuple(sys.version_info[:2])):
        pytest.skip(f"{SYSTEM_PYTHON} is Python {version}, the tests run {sys.version_info[:2]}: "
                    "the compiled dependencies would not load")
    return SYSTEM_PYTHON


def _copy(source: pathlib.Path, target_dir: pathlib.Path, name: str | None = None) -> None:
    target = target_dir / (name or source.name)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(source, target)


def daemon_tree() -> pathlib.Path:
    """A fresh world-readable folder from which ``python3 -m virtiofsd`` runs (PYTHONPATH)."""
    tree = pathlib.Path(tempfile.mkdtemp(prefix="vfs-unpriv-"))
    for module_name in RUNTIME_MODULES:
        module = importlib.import_module(module_name)
        path = pathlib.Path(module.__file__)
        _copy(path.parent if path.name == "__init__.py" else path, tree)
    for package in ("virtiofsd", "virtiofsd_plugins"):
        _copy(pathlib.Path(importlib.import_module(package).__file__).parent, tree, package)
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    dist_info = pathlib.Path(distribution._path)  # the folder holding entry_points.txt
    _copy(dist_info, tree)
    for directory, subdirectories, files in os.walk(tree):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return tree


def as_user(user: pwd.struct_passwd) -> list[str]:
    """The command prefix running the rest as ``user`` (no supplementary groups)."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


def daemon_command_from(tree: pathlib.Path) -> list[str]:
    """The command prefix running our daemon from ``tree`` with the system's interpreter."""
    return ["env", f"PYTHONPATH={tree}", str(system_python()), "-m", "virtiofsd"]


def daemon_command_as(user: pwd.struct_passwd, tree: pathlib.Path) -> list[str]:
    """The command prefix running our daemon from ``tree`` as ``user`` (no supplementary groups)."""
    return [*as_user(user), *daemon_command_from(tree)]


#: The subordinate ids the tests give the ordinary user (the seed README's example range).
SUBORDINATE_BASE = 100000
SUBORDINATE_COUNT = 65536


def give_subordinate_ids(user: pwd.struct_passwd) -> None:
    """Give ``user`` the range SUBORDINATE_BASE.. in /etc/subuid and /etc/subgid (idempotent:
    an existing line for the user with that start is kept)."""
    wanted = f"{user.pw_name}:{SUBORDINATE_BASE}:{SUBORDINATE_COUNT}"
    last = SUBORDINATE_BASE + SUBORDINATE_COUNT - 1
    for path, option in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        lines = pathlib.Path(path).read_text().splitlines() if os.path.exists(path) else []
        if wanted not in lines:
            subprocess.run(["usermod", option, f"{SUBORDINATE_BASE}-{last}", user.pw_name],
                           check=True, capture_output=True)


def require_newuidmap() -> None:
    """Skip unless newuidmap and newgidmap (Debian package uidmap) are installed."""
    for helper in ("newuidmap", "newgidmap"):
        if shutil.which(helper) is None:
            pytest.skip(f"{helper} is missing (scripts/install-deps.sh installs uidmap)")


def user_folder(user: pwd.struct_passwd, prefix: str) -> pathlib.Path:
    """A folder ``user`` owns, reachable by that user (pytest's tmp_path is not: it is 0700)."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o755)
    os.chown(folder, user.pw_uid, user.pw_gid)
    return folder
