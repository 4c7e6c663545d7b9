"""Every direct dependency at its lower bound, then the parity tests (`make check-minimums`).

pyproject.toml's lower bounds promise that a user who installs with pip alone, without the
locks, gets versions the code supports. This proves it: for each Makefile environment, a
throwaway virtual environment gets each direct dependency pinned to its bound (`>=X` becomes
`==X`; what those need resolves freely), then the parity tests run there and must pass with
every backend of that environment required.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# environment -> (extras, the Makefile environment the registry names, folder)
ENVIRONMENTS = {
    "main": (("torch", "jax", "tf", "test"), "env:main", ".venv-minimums"),
    "mxnet": (("mxnet", "test"), "env:mxnet", ".venv-mxnet-minimums"),
}
# Bounds of the shared core that the main environment cannot install beside its frameworks,
# with the floor those force; the core's own bounds hold in .venv-mxnet. tensorflow 2.18 needs
# numpy>=1.26.0 and jax 0.5.0 scipy>=1.11.1.
FORCED_FLOORS = {"main": {"numpy": "1.26.0", "scipy": "1.11.1"}}
# Parity with the NumPy reference, the reference's own tests, and the tests that reach gensim's
# and scipy's APIs (evaluation, the sampling statistics).
TESTS = ["tests/test_parity.py", "tests/test_numpy_backend.py", "tests/test_evaluate.py",
         "tests/test_sampling.py"]


def lowest_pins(extras: tuple[str, ...]) -> list[str]:
    """`name==lower-bound` for each direct dependency of the core and `extras`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    lower: dict[str, str] = {}
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)[0].lower()
        for operator, version in re.findall(r"(>=|==)\s*([0-9][^,;\s]*)", requirement):
            if operator == "==" or name not in lower or _key(version) > _key(lower[name]):
                lower[name] = version
    unbounded = {re.match(r"[A-Za-z0-9._-]+", r)[0].lower() for r in requirements} - set(lower)
    if unbounded:
        raise SystemExit(f"check-minimums: {', '.join(sorted(unbounded))} in pyproject.toml "
                         f"has no lower bound; give each one (>=X)")
    return [f"{name}=={version}" for name, version in sorted(lower.items())]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def check(environment: str, python: str) -> bool:
    """Build the environment at the lower bounds and run the parity tests; True if they pass."""
    extras, required, folder = ENVIRONMENTS[environment]
    venv = ROOT / folder
    shutil.rmtree(venv, ignore_errors=True)
    forced = FORCED_FLOORS.get(environment, {})
    pins = [f"{name}=={forced[name]}" if name in forced else pin
            for pin in lowest_pins(extras) for name in [pin.split("==")[0]]]
    print(f"== {environment}: {' '.join(pins)}", flush=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # A current pip: an old one's resolver backtracks for many minutes over these old pins
    # before it finds (or fails to find) a set; this environment is thrown away anyway.
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *pins], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"],
                            check=True, capture_output=True, text=True).stdout.split()
    names = {pin.split("==")[0] for pin in pins}
    installed = [line for line in frozen if re.split(r"==", line)[0].lower() in names]
    print(f"== {environment}: installed {' '.join(installed)}", flush=True)
    run = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p",
                          "no:cacheprovider", *TESTS], cwd=ROOT,
                         env={**os.environ, "W2V_REQUIRE_BACKENDS": required})
    print(f"== {environment}: {' '.join(TESTS)} "
          f"{'passed' if run.returncode == 0 else 'FAILED'} at the lower bounds", flush=True)
    return run.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--mxnet-python", default=sys.executable)
    parser.add_argument("--only", choices=sorted(ENVIRONMENTS), action="append")
    args = parser.parse_args()
    interpreters = {"main": args.python, "mxnet": args.mxnet_python}
    try:
        results = {name: check(name, interpreters[name]) for name in args.only or ENVIRONMENTS}
    except subprocess.CalledProcessError as error:
        print(f"check-minimums: {' '.join(map(str, error.cmd[:4]))} ... failed "
              f"(exit {error.returncode}): the lower bounds cannot be installed together; "
              f"raise the bound pip names above", file=sys.stderr)
        return 1
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
