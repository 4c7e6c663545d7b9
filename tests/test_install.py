"""The Makefile's install commands, read with `make -n` (nothing is installed or downloaded).

The PyTorch wheel index cannot be reached from this machine or from CI, so TORCH_INDEX is
tested by the pip commands it produces: torch alone from the extra index, everything else from
the main index, every environment under its lock.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def planned_pip_commands(target: str, *variables: str) -> list[str]:
    """The pip lines `make` would run to build `target` (forced, dry: -B -n)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-s", "-B", "-n", target, *variables], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return [line for line in done.stdout.splitlines() if "pip install" in line]


@pytest.mark.parametrize("target, lock", [(".venv/.ready", "constraints/main.txt"),
                                          (".venv-gpu/.ready", "constraints/gpu.txt")])
def test_torch_index_serves_torch_alone_and_keeps_the_main_index(target: str, lock: str) -> None:
    torch_line, project_line = planned_pip_commands(target, f"TORCH_INDEX={CPU_INDEX}")
    assert f"--extra-index-url {CPU_INDEX}" in torch_line
    assert torch_line.split()[-1] == "torch" and f"-c {lock}" in torch_line
    # The rest comes from the main index: no index option at all on the project's line.
    assert "index-url" not in project_line and f"-c {lock}" in project_line
    assert "-e .[torch," in project_line.replace('"', "")


def test_without_torch_index_no_other_index_is_named() -> None:
    lines = planned_pip_commands(".venv/.ready")
    assert len(lines) == 2 and not any("index-url" in line for line in lines)


def test_mxnet_environment_installs_under_its_own_lock() -> None:
    (line,) = planned_pip_commands(".venv-mxnet/.ready", f"TORCH_INDEX={CPU_INDEX}")
    assert "-c constraints/mxnet.txt" in line and "index-url" not in line
    assert "-e .[mxnet,test]" in line.replace('"', "")


@pytest.mark.parametrize("lock", ["main", "mxnet", "gpu"])
def test_each_lock_pins_its_frameworks(lock: str) -> None:
    text = (ROOT / "constraints" / f"{lock}.txt").read_text(encoding="utf-8")
    pins = dict(line.split("==") for line in text.splitlines() if not line.startswith("#"))
    expected = {"main": ("torch", "jax", "flax", "optax", "tensorflow", "gensim", "numpy"),
                "mxnet": ("mxnet", "gensim", "numpy", "scipy", "matplotlib"),
                "gpu": ("torch", "jax-cuda12-plugin", "tensorflow", "nvidia-cudnn-cu12")}[lock]
    assert all(name in pins for name in expected), sorted(set(expected) - set(pins))
    assert all("+" not in version for version in pins.values())
    if lock == "mxnet":
        assert pins["mxnet"] == "1.9.1" and tuple(map(int, pins["numpy"].split(".")[:2])) < (1, 24)
