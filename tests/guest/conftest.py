"""Selects which daemons the real-guest tests run against, and checks the host can boot a guest.

``--guest-daemons ours,rust`` (or the environment variable VIRTIOFSD_GUEST_DAEMONS) lists
the daemons; every test that takes the ``daemon_name`` fixture runs once per daemon.  Boots
go through ``boot_once``, so each workload boots once per daemon (and per variant) however
pytest happens to order the tests that read its results.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from . import runner

KNOWN_DAEMONS = ("ours", "rust")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--guest-qemus",
        default=os.environ.get("VIRTIOFSD_GUEST_QEMUS", "system,backports"),
        help="comma-separated QEMUs the main workload boots under: system (Debian 12's 7.2), "
             "backports (10.0, fetched by scripts/qemu-backports.sh) "
             "(default: $VIRTIOFSD_GUEST_QEMUS or 'system,backports')",
    )
    parser.addoption(
        "--guest-daemons",
        default=os.environ.get("VIRTIOFSD_GUEST_DAEMONS", "ours,rust"),
        help="comma-separated daemons the real-guest tests boot against: ours, rust "
             "(default: $VIRTIOFSD_GUEST_DAEMONS or 'ours,rust')",
    )


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout sends SIGTERM; turning it into KeyboardInterrupt lets the boot's finally
    # blocks kill QEMU and the daemon and remove the temporary directories.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def selected_daemons(config: pytest.Config) -> list[str]:
    names = [name.strip() for name in config.getoption("--guest-daemons").split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_DAEMONS]
    if unknown:
        raise pytest.UsageError(f"--guest-daemons: unknown {unknown}; choose from {KNOWN_DAEMONS}")
    return names


def selected_qemus(config: pytest.Config) -> list[str]:
    names = [name.strip() for name in config.getoption("--guest-qemus").split(",") if name.strip()]
    unknown = [name for name in names if name not in runner.QEMUS]
    if unknown:
        raise pytest.UsageError(f"--guest-qemus: unknown {unknown}; choose from {list(runner.QEMUS)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "daemon_name" in metafunc.fixturenames:
        metafunc.parametrize("daemon_name", selected_daemons(metafunc.config))
    if "qemu_name" in metafunc.fixturenames:
        metafunc.parametrize("qemu_name", selected_qemus(metafunc.config))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.guest)
            item.add_marker(pytest.mark.root)


@pytest.fixture
def qemu_binary(qemu_name: str) -> str:
    """The QEMU of this test; one that is selected but missing fails with the fix."""
    binary = runner.QEMUS[qemu_name]
    if shutil.which(binary) is None:
        pytest.fail(f"QEMU '{qemu_name}' ({binary}) is missing: run scripts/qemu-backports.sh, or "
                    f"leave it out with --guest-qemus")
    return binary


@pytest.fixture(scope="session", autouse=True)
def guest_host_ready() -> None:
    """Fails early, with the fix, when the host lacks what a boot needs."""
    if os.geteuid() != 0:
        pytest.skip("real-guest tests need root (the daemons change owners on the host)")
    missing = [tool for tool in (runner.QEMU, "apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"real-guest tests need {missing}; run scripts/install-deps.sh")


@pytest.fixture(scope="session")
def boot_once():
    """``boot_once(key, make)``: the result of ``make()`` for ``key``, computed once per session.

    A failed boot is remembered too, so the many tests reading one boot's results all report
    its error instead of booting again each.
    """
    outcomes: dict[object, tuple[bool, object]] = {}

    def get(key, make):
        if key not in outcomes:
            try:
                outcomes[key] = (True, make())
            except Exception as error:
                outcomes[key] = (False, error)
                raise
        succeeded, value = outcomes[key]
        if not succeeded:
            raise runner.BootError(f"(boot {key} already failed earlier in this session)\n{value}")
        return value

    return get
