"""Backend parametrisation shared by every test module.

A backend whose framework is missing skips with its reason on a user's machine; with
`W2V_REQUIRE_BACKENDS` set (CI sets it) a missing one fails instead. The session ends by
printing which backends ran in this environment, so CI's log shows the coverage.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

import backends
from backends.base import OPTIMIZERS, STEPS
from helpers import RAN, SKIPPED, require_backend, required_backends


@pytest.fixture(params=backends.names())
def backend_name(request: pytest.FixtureRequest) -> str:
    """Every backend the registry knows, one test each."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=[n for n in backends.names() if n != "numpy"])
def framework_backend(request: pytest.FixtureRequest) -> str:
    """Every backend but the NumPy reference, for parity tests against it."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=STEPS)
def step(request: pytest.FixtureRequest) -> str:
    """Each training step: the chapter's (framework autodiff and Adam) and the tuned one."""
    return request.param


@pytest.fixture(params=OPTIMIZERS)
def optimizer(request: pytest.FixtureRequest) -> str:
    """Each optimiser: the chapter's dense Adam, SparseAdam's touched rows, word2vec's SGD."""
    return request.param


@pytest.fixture(scope="session")
def ptb_data() -> Path:
    """The real PTB zip from `W2V_PTB` (CI points it at the shared copy)."""
    value = os.environ.get("W2V_PTB")
    if not value or not Path(value).exists():
        if os.environ.get("W2V_REQUIRE_DATA"):
            pytest.fail("W2V_REQUIRE_DATA is set but W2V_PTB does not name an existing file")
        pytest.skip("set W2V_PTB to a local ptb.zip to run the PTB tests")
    return Path(value)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop signals as a terminal delivers them. `nohup make test` ignores SIGHUP, and a
    background job of a non-interactive shell ignores SIGINT; w2v rightly keeps an ignored
    signal off (and so do the processes the tests start, which inherit it), so the tests that
    send one would fail for the way the suite was started."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: signal.SIG_DFL,
                signal.SIGTERM: signal.SIG_DFL}
    for signum, handler in defaults.items():
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, handler)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    env = Path(sys.prefix).name
    ran_file = os.environ.get("W2V_RAN_FILE")
    if ran_file:
        Path(ran_file).write_text(", ".join(sorted(RAN)) + "\n", encoding="utf-8")
    never_ran = required_backends() - RAN
    if never_ran:
        terminalreporter.write_line(f"required backends that no test ran: {sorted(never_ran)}")
    terminalreporter.write_line(
        f"backends run in {env} (python {sys.version.split()[0]}): "
        f"{', '.join(sorted(RAN)) or 'none'}")
    for name, reason in sorted(SKIPPED.items()):
        terminalreporter.write_line(f"backend skipped in {env}: {name}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A required backend that no test exercised is a gap in CI, not a pass.
    if exitstatus == 0 and required_backends() - RAN:
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Token caches and downloads go to a temporary folder, never the user's ~/.cache.

    Set in the environment, so CLI subprocesses started by tests inherit it; tests that
    test the cache location set their own.
    """
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
