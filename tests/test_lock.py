"""The environment runs the versions its lock names, so a drift fails and names the package.

`make test` points `W2V_LOCK_FILE` at the environment's constraints file; a user who installed
with pip alone has no lock to match, and these tests skip.
"""
from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest

# Put in every virtual environment by `python -m venv` or `pip install -e`, never locked.
UNLOCKED = {"pip", "setuptools", "wheel", "w2v-multi"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} from a constraints file of `name==version` lines."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if not match:
            raise ValueError(f"{path}:{number}: not a `name==version` pin: {line!r}")
        pins[_normalise(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """{normalised name: version without its local label} of this interpreter's packages."""
    return {_normalise(dist.metadata["Name"]): dist.version.split("+", 1)[0]
            for dist in metadata.distributions()}


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    value = os.environ.get("W2V_LOCK_FILE")
    if not value:
        pytest.skip("W2V_LOCK_FILE is not set (make test sets it): no lock to compare with")
    return read_lock(Path(value))


def test_every_locked_package_is_installed_at_its_version(lock: dict[str, str]) -> None:
    have = installed()
    wrong = {name: (version, have.get(name)) for name, version in lock.items()
             if have.get(name) != version}
    assert not wrong, "installed versions differ from the lock (name: (locked, installed)): " \
        f"{wrong}; rebuild with `make clean-env test`, or `make lock` to move the lock"


def test_nothing_unlocked_is_installed(lock: dict[str, str]) -> None:
    extra = sorted(set(installed()) - set(lock) - UNLOCKED)
    assert not extra, f"installed but not in the lock: {extra}; run `make lock`"


def test_read_lock_refuses_a_line_that_is_not_a_pin(tmp_path: Path) -> None:
    path = tmp_path / "lock.txt"
    path.write_text("# header\nnumpy==1.23.5\ntorch>=2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lock.txt:3: not a `name==version` pin"):
        read_lock(path)


def test_local_labels_are_dropped_so_a_cpu_build_matches_its_public_version() -> None:
    # torch's CPU wheel calls itself 2.13.0+cpu; the lock names the public 2.13.0.
    versions = installed()
    assert all("+" not in version for version in versions.values())
    if "torch" in versions:
        assert metadata.version("torch").split("+", 1)[0] == versions["torch"]
