"""Backend parametrisation shared by every test module.

A backend whose framework is missing skips with its reason on a user's machine; with
`W2V_REQUIRE_BACKENDS` set (CI sets it) a missing one fails instead. The session ends by
printing which backends ran in this environment, so CI's log shows the coverage.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import backends

# The chapter reproduced on PTB (5 epochs, the chapter's settings, seed 0) on the streaming
# pipeline, whose draws are keyed by position: the figures every backend lands on, here once.
# `tests/test_end_to_end.py` checks them; README's table shows them.
PTB_EPOCH_LOSSES = (0.4804, 0.4272, 0.4041, 0.3800, 0.3593)
PTB_ALL_EPOCHS_MEAN = 0.4102  # the chapter prints 0.410
PTB_LOSS_TOLERANCE = 3e-4     # float32 summation order across frameworks, over 3,345 steps

_RAN: set[str] = set()
_SKIPPED: dict[str, str] = {}


def _required() -> set[str]:
    """Backends this environment must run.

    `W2V_REQUIRE_BACKENDS` is `all`, `env:main` / `env:mxnet` (every backend the registry
    places in that Makefile environment, plus the NumPy reference, which runs everywhere), or
    a comma-separated list of names.
    """
    value = os.environ.get("W2V_REQUIRE_BACKENDS", "").strip()
    if not value:
        return set()
    if value == "all":
        return set(backends.names())
    if value.startswith("env:"):
        hosted = {n for n in backends.names() if backends.environment(n) == value[4:]}
        return hosted | {"numpy"}
    return {backends.canonical(name) for name in value.split(",") if name.strip()}


def require_backend(name: str) -> None:
    """Skip (or fail, when required) if `name` cannot load here; record that it ran."""
    reason = backends.missing(name)
    if reason:
        if name in _required():
            pytest.fail(f"required backend unavailable: {reason}")
        _SKIPPED[name] = reason
        pytest.skip(reason)
    _RAN.add(name)


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


def tiny_corpus(tmp_path: Path) -> Path:
    """A small text corpus with clear topics: 400 sentences, 3,200 centre words at t=1.

    3,200 is no multiple of 60 or 64, so small batch sizes leave a short last batch to pad.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    topics = [["chip", "intel", "processor", "computer", "memory"],
              ["bank", "money", "loan", "credit", "interest"],
              ["president", "election", "vote", "senate", "party"]]
    lines = [" ".join(rng.choice(topics[rng.integers(3)], size=8)) for _ in range(400)]
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ptb_data() -> Path:
    """The real PTB zip from `W2V_PTB` (CI points it at the shared copy)."""
    value = os.environ.get("W2V_PTB")
    if not value or not Path(value).exists():
        if os.environ.get("W2V_REQUIRE_DATA"):
            pytest.fail("W2V_REQUIRE_DATA is set but W2V_PTB does not name an existing file")
        pytest.skip("set W2V_PTB to a local ptb.zip to run the PTB tests")
    return Path(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    env = Path(sys.prefix).name
    ran_file = os.environ.get("W2V_RAN_FILE")
    if ran_file:
        Path(ran_file).write_text(", ".join(sorted(_RAN)) + "\n", encoding="utf-8")
    never_ran = _required() - _RAN
    if never_ran:
        terminalreporter.write_line(f"required backends that no test ran: {sorted(never_ran)}")
    terminalreporter.write_line(
        f"backends run in {env} (python {sys.version.split()[0]}): "
        f"{', '.join(sorted(_RAN)) or 'none'}")
    for name, reason in sorted(_SKIPPED.items()):
        terminalreporter.write_line(f"backend skipped in {env}: {name}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A required backend that no test exercised is a gap in CI, not a pass.
    if exitstatus == 0 and _required() - _RAN:
        session.exitstatus = 1


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Token caches and downloads go to a temporary folder, never the user's ~/.cache.

    Set in the environment, so CLI subprocesses started by tests inherit it; tests that
    test the cache location set their own.
    """
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
