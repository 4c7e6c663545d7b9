"""Re-resolve an environment's dependencies and rewrite its constraints file (`make lock`).

Each environment of the Makefile installs with `-c constraints/<env>.txt`, so a fresh clone
gets the exact versions the suite last passed on. This script resolves the direct
dependencies that `pyproject.toml` declares for the environment, in a throwaway virtual
environment of the target interpreter (so markers and wheel tags are the target's), with pip's
`--dry-run --report`: nothing is installed, and where the index serves wheel metadata nothing
large is downloaded. Local version labels (`2.13.0+cpu`) are dropped: the CPU or CUDA build of
torch is the index's choice (the Makefile's TORCH_INDEX), not the lock's.

    python constraints/lock.py main  --python python3.11 --pin torch==2.13.0
    python constraints/lock.py mxnet --python python3.11
    python constraints/lock.py gpu   --python python3.11 --pin torch==2.13.0 --isolated
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Which extras of pyproject.toml make up each environment (the Makefile's).
ENVIRONMENTS = {
    "main": ("torch", "jax", "tf", "test"),
    "mxnet": ("mxnet", "test"),
    "gpu": ("torch", "jax-cuda", "tf-cuda", "test"),
}
# Installed into every venv by `python -m venv`, never part of a lock.
TOOLING = {"pip", "setuptools", "wheel"}


def requirements(environment: str, pins: list[str]) -> list[str]:
    """The direct requirements of `environment`: core, its extras, then `pins` overriding."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in ENVIRONMENTS[environment]:
        wanted += _expand(project, extra)
    pinned = {_name(pin) for pin in pins}
    return [req for req in wanted if _name(req) not in pinned] + pins


def _expand(project: dict, extra: str) -> list[str]:
    """An extra's requirements, with the project's references to its own extras inlined."""
    expanded = []
    for requirement in project["optional-dependencies"][extra]:
        if _name(requirement) == _name(project["name"]):
            for inner in re.search(r"\[(.*)\]", requirement)[1].split(","):
                expanded += _expand(project, inner.strip())
        else:
            expanded.append(requirement)
    return expanded


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def resolve(python: str, wanted: list[str], isolated: bool) -> dict[str, str]:
    """{name: version} of everything pip would install for `wanted` under `python`."""
    with tempfile.TemporaryDirectory(prefix="w2v-lock-") as scratch:
        venv = Path(scratch) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        report = Path(scratch) / "report.json"
        environment = dict(os.environ)
        if isolated:
            # The machine's own pip configuration (local wheel folders, caps) stays out: this
            # resolves what the public index alone gives, as on a user's machine.
            environment = {k: v for k, v in environment.items() if not k.startswith("PIP_")}
            environment["PIP_CONFIG_FILE"] = os.devnull
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--report", str(report), *wanted],
                       check=True, env=environment)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    versions = {}
    for item in installs:
        name = _name(item["metadata"]["name"])
        if name not in TOOLING:
            versions[name] = item["metadata"]["version"].split("+", 1)[0]
    return versions


def write(environment: str, versions: dict[str, str], python: str) -> Path:
    """Write constraints/<environment>.txt atomically, sorted, with how it was made."""
    interpreter = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                                 check=True, capture_output=True, text=True).stdout.strip()
    lines = [f"# Locked by `make lock` for the {environment!r} environment "
             f"(Python {interpreter}); do not edit by hand.",
             *(f"{name}=={version}" for name, version in sorted(versions.items()))]
    target = ROOT / "constraints" / f"{environment}.txt"
    partial = target.with_suffix(".txt.tmp")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("environment", choices=sorted(ENVIRONMENTS))
    parser.add_argument("--python", default=sys.executable, help="target interpreter")
    parser.add_argument("--pin", action="append", default=[],
                        help="a requirement that replaces pyproject's for this package "
                             "(torch: its version decides which wheel a machine downloads)")
    parser.add_argument("--isolated", action="store_true",
                        help="ignore this machine's pip configuration (the public index only)")
    args = parser.parse_args()
    try:
        versions = resolve(args.python, requirements(args.environment, args.pin), args.isolated)
    except subprocess.CalledProcessError as error:
        print(f"lock: pip could not resolve the {args.environment} environment "
              f"(exit {error.returncode}); see pip's message above", file=sys.stderr)
        return 1
    target = write(args.environment, versions, args.python)
    print(f"lock: wrote {len(versions)} pins to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
