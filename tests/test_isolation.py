"""Lazy by design: importing `common` imports no framework, and a backend only its own.

Each check runs in a fresh interpreter (`sys.executable -c ...`), since this test process has
already imported whatever other tests needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import backends

ROOT = Path(__file__).resolve().parents[1]
# Every framework some backend may bring in; flax and optax come with the jax backend.
FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib", "mxnet", "flax", "optax", "keras")


def imported_after(code: str) -> dict[str, list[str]]:
    """Run `code` in a fresh interpreter; report the frameworks and backend modules it loaded."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps({{'frameworks': sorted(m for m in {FRAMEWORKS!r} "
             f"if m in sys.modules), 'backends': sorted(m for m in sys.modules "
             f"if m.startswith('backends.') and m != 'backends.base')}}))")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_common_imports_no_framework():
    modules = sorted(path.stem for path in (ROOT / "common").glob("*.py")
                     if path.stem != "__init__")
    code = "import common, backends\n" + "\n".join(f"import common.{m}" for m in modules)
    assert imported_after(code)["frameworks"] == []


def test_registry_queries_import_nothing():
    code = ("import backends\n"
            "for name in backends.names():\n"
            "    backends.missing(name); backends.canonical(name); backends.environment(name)\n")
    assert imported_after(code) == {"frameworks": [], "backends": []}


def test_loading_a_backend_leaves_every_other_framework_out(backend_name):
    # What a backend may import: the modules the registry says it needs.
    own = set(backends._REGISTRY[backend_name][0])
    loaded = imported_after(f"import backends\nbackends.load({backend_name!r})")
    foreign = set(loaded["frameworks"]) - own
    assert not foreign, f"loading {backend_name} imported {sorted(foreign)}"
    other_backends = {m for m in loaded["backends"]
                      if m.split(".")[1] != backend_name}
    assert not other_backends, f"loading {backend_name} imported {sorted(other_backends)}"
