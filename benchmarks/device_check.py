"""The device check: parity and two-tier throughput of every framework this Python has, on one
device, within a time budget; what could not run is reported with its reason.

    benchmarks/device_check.sh [--device gpu] [--out DIR]    # the wrapper finds a Python
    python -m benchmarks.device_check --device cpu --out /tmp/check --timed-words 5000

Made for a GPU machine that may have no network, another Python and only preinstalled
frameworks (other versions, perhaps no TensorFlow or MXNet): it builds no environment and
installs nothing. For each backend this Python can load and that offers the device:
- parity on the device: both steps, a few Adam steps on seeded batches, against the NumPy
  oracle's chapter step on the host (`parity.jsonl`);
- throughput of both steps on PTB (`W2V_PTB`), or, without PTB, on a generated Zipf corpus
  (`throughput.jsonl`; the corpus is named in every row);
- data-parallel replicas (issue 21) where the backend sees two GPUs or more: one epoch of
  `w2v train --data-parallel 1` against `--data-parallel N`, N = all its GPUs: the epoch losses
  must agree to 1e-4 relative; both rates are recorded (`replicas.jsonl`);
then the parity test suite (`tests/test_parity.py`, CPU) when pytest is installed. Everything
goes under `--out`: `environment.json`, the JSON lines, `summary.json` and `summary.txt`, which
lists what ran, what did not and why. Exit 0 when everything that could run passed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import machine

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("chapter", "fast")
PARITY_TOLERANCE = 1e-4  # float32 summation order; TF32 matmuls are switched off below


def _child(args: list[str], timeout: float) -> tuple[int, str, str]:
    """Run `python args` here; (exit code, stdout, stderr), -9 on timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Full float32 matmuls on GPUs, so parity holds to float32 (JAX and TF allow TF32 by default).
    env.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    env.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        return -9, out or "", f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout, done.stderr


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


PROBE = """
import json, backends
name = NAME
why = backends.missing(name)
if why:
    print(json.dumps({"missing": why}))
else:
    backend = backends.load(name)
    print(json.dumps({"version": backend.version(), "devices": backend.devices(),
                      "data_parallel": bool(backend.data_parallel)}))
"""


def probe(name: str, timeout: float) -> dict[str, Any]:
    """What backend `name` is here: its version and devices, or why it cannot load."""
    code, out, err = _child(["-c", PROBE.replace("NAME", repr(name))], timeout)
    if code == 0 and _last_line(out).startswith("{"):
        return json.loads(_last_line(out))
    return {"missing": f"loading it failed: {_last_line(err) or f'exit {code}'}"}


def parity(name: str, device: str, *, steps: int = 3, vocab: int = 50,
           embed: int = 8) -> list[dict[str, Any]]:
    """Both steps of `name` on `device` against the NumPy oracle: `steps` Adam steps on seeded
    batches; the largest differences of losses and tables."""
    import numpy as np

    import backends
    from common.batching import Batch

    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):
        rows, width = 16, 12
        lengths = rng.integers(0, width + 1, size=rows)
        contexts = np.minimum(rng.integers(1, 4, size=rows), lengths)
        columns = np.arange(width)
        batches.append(Batch(rng.integers(0, vocab, size=(rows, 1)).astype(np.int32),
                             rng.integers(0, vocab, size=(rows, width)).astype(np.int32),
                             (columns < lengths[:, None]).astype(np.float32),
                             (columns < contexts[:, None]).astype(np.float32)))
    oracle = backends.load("numpy")(vocab, embed, seed=0, step="chapter")
    expected = [float(oracle.to_numpy(oracle.train_step(batch))) for batch in batches]
    expected_params = oracle.get_params()
    records = []
    for step in STEPS:
        backend = backends.load(name)(vocab, embed, seed=0, step=step, device=device)
        losses = [float(x) for x in backend.losses_to_numpy(
            [loss for batch in batches for loss in backend.train_steps([batch])])]
        params = backend.get_params()
        loss_diff = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses, expected))
        table_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, expected_params))
        records.append(machine.stamp({
            "benchmark": "device_parity", "backend": name, "step": step, "device": device,
            "framework_version": backends.load(name).version(), "adam_steps": steps,
            "max_relative_loss_difference": loss_diff,
            "max_table_difference": table_diff, "tolerance": PARITY_TOLERANCE,
            "passed": loss_diff <= PARITY_TOLERANCE and table_diff <= PARITY_TOLERANCE}))
    return records


REPLICA_TOLERANCE = 1e-4  # the issue's: N replicas equal one to float32 summation order


def gpu_count(devices: list[str]) -> int:
    """How many GPUs a backend offers (its `devices()` names them gpu, gpu:0, gpu:1, ...)."""
    return len({d for d in devices if d.startswith("gpu:")}) or int("gpu" in devices)


def replicas(name: str, device: str, count: int, corpus: list[str], out: Path,
             timeout: float) -> dict[str, Any]:
    """One epoch with 1 replica and with `count` on `device`; their losses and centre words/s.

    Raises RuntimeError with the run's last line when one of them fails.
    """
    runs = {}
    for replica_count in (1, count):
        run = out / f"replicas-{name}-{replica_count}"
        code, _, stderr = _child(["-m", "common.cli", "train", "--backend", name, "--device",
                                  device, "--data-parallel", str(replica_count), "--epochs", "1",
                                  "--out", str(run), "--overwrite", "--no-progress", *corpus],
                                 timeout / 2)
        if code != 0:
            raise RuntimeError(f"--data-parallel {replica_count}: "
                               f"{_last_line(stderr) or f'exit {code}'}")
        runs[replica_count] = json.loads((run / "report.json").read_text())["epochs"][-1]
    one, many = runs[1]["mean_loss"], runs[count]["mean_loss"]
    difference = abs(many - one) / max(abs(one), 1e-12)
    return machine.stamp({
        "benchmark": "device_replicas", "backend": name, "device": device, "replicas": count,
        "loss_1": one, f"loss_{count}": many, "relative_difference": difference,
        "centre_words_per_second_1": runs[1]["words_per_second"],
        f"centre_words_per_second_{count}": runs[count]["words_per_second"],
        "tolerance": REPLICA_TOLERANCE, "passed": difference <= REPLICA_TOLERANCE})


def corpus_arguments(out: Path, data: str | None, words: int) -> tuple[list[str], str]:
    """The throughput's corpus: PTB when it is here, else a generated Zipf text (no network)."""
    if data and Path(data).exists():
        return ["--data", data], "ptb"
    from benchmarks import zipf

    path = zipf.write_text(out / "zipf.txt", max(words * 4, 200_000), types=10_000,
                           exponent=1.1, line_length=20, seed=0)
    return ["--corpus", str(path)], f"zipf text ({path.name}, no PTB: set W2V_PTB)"


def check(device: str, out: Path, *, data: str | None, timed_words: int, budget_s: float,
          tests: bool, names: list[str] | None = None) -> dict[str, Any]:
    """Everything the module docstring lists, for backends `names` (default: all); returns
    the summary it writes."""
    import backends

    deadline = time.monotonic() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    failed: list[str] = []
    skipped: list[str] = []
    found = {name: probe(name, max(min(180, deadline - time.monotonic()), 1))
             for name in names or backends.names()}
    gpu = subprocess.run(["sh", "-c", "nvidia-smi --query-gpu=name,driver_version,memory.total "
                          "--format=csv,noheader 2>/dev/null"], capture_output=True, text=True)
    environment = {"python": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform(), "cpu": machine.cpu_model(),
                   "cpus": machine.threads(), "gpus": gpu.stdout.strip().splitlines(),
                   "device": device, "backends": found, "date": machine.now(),
                   "commit": machine.commit()}
    (out / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
    corpus, corpus_name = corpus_arguments(out, data, timed_words)
    for name, facts in found.items():
        if "missing" in facts:
            skipped.append(f"{name}: {facts['missing']}")
            continue
        if device not in facts["devices"] and not (device == "gpu" and any(
                d.startswith("gpu") for d in facts["devices"])):
            skipped.append(f"{name} {facts['version']}: no {device} (offers "
                           f"{', '.join(facts['devices'])})")
            continue
        left = deadline - time.monotonic()
        if left < 20:
            skipped.append(f"{name}: the time budget ({budget_s:.0f} s) ran out")
            continue
        code, stdout, stderr = _child(["-m", "benchmarks.device_check", "--parity", name,
                                       "--device", device, "--out", str(out)], min(left, 240))
        if code == 0:
            ran.append(f"{name} parity on {device} (both steps): passed")
        else:
            failed.append(f"{name} parity on {device}: {_last_line(stderr) or _last_line(stdout)}")
        for step in STEPS:
            left = deadline - time.monotonic()
            if left < 20:
                skipped.append(f"{name} {step} throughput: the time budget ran out")
                continue
            code, stdout, stderr = _child(
                ["-m", "benchmarks.throughput", "--backend", name, "--step", step, "--device",
                 device, "--repeats", "1", "--timed-words", str(timed_words), "--out",
                 str(out / "throughput.jsonl"), *corpus], min(left, 240))
            line = stdout.strip().splitlines()[0] if stdout.strip() else ""
            if code == 0:
                ran.append(f"{name} {step} throughput on {corpus_name}: {line}")
            else:
                failed.append(f"{name} {step} throughput: {_last_line(stderr) or f'exit {code}'}")
        count = gpu_count(facts["devices"]) if device.startswith("gpu") else 0
        left = deadline - time.monotonic()
        if not facts.get("data_parallel"):
            pass  # the NumPy oracle has no distributed engine and need not have one
        elif count < 2:
            skipped.append(f"{name} replicas: --data-parallel compares 1 with all GPUs, and "
                           f"{'there is one' if count else f'{device} is not a GPU'}")
        elif left < 40:
            skipped.append(f"{name} replicas: the time budget ran out")
        else:
            try:
                record = replicas(name, device.split(":")[0], count, corpus, out, min(left, 300))
            except RuntimeError as error:
                failed.append(f"{name} replicas on {count} GPUs: {error}")
            else:
                machine.append_jsonl(out / "replicas.jsonl", record)
                line = (f"{name} replicas: epoch loss {record['loss_1']:.4f} with 1, "
                        f"{record[f'loss_{count}']:.4f} with {count} GPUs; "
                        f"{record['centre_words_per_second_1']:,.0f} against "
                        f"{record[f'centre_words_per_second_{count}']:,.0f} centre words/s")
                (ran if record["passed"] else failed).append(line)
    if tests:
        left = deadline - time.monotonic()
        has_pytest = _child(["-c", "import pytest"], 60)[0] == 0
        if not has_pytest:
            skipped.append("tests/test_parity.py: pytest is not installed")
        elif left < 30:
            skipped.append("tests/test_parity.py: the time budget ran out")
        else:
            code, stdout, _ = _child(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                                      "tests/test_parity.py"], left - 5)
            (out / "test_parity.txt").write_text(stdout)
            result = _last_line(stdout)
            (ran if code == 0 else failed).append(f"tests/test_parity.py (CPU): {result}")
    summary = {"device": device, "out": str(out), "ran": ran, "failed": failed,
               "could_not_run": skipped, "seconds": round(budget_s - (deadline - time.monotonic()), 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = [f"device check on {device}, {summary['seconds']} s, results in {out}",
            *[f"ran: {line}" for line in ran], *[f"FAILED: {line}" for line in failed],
            *[f"could not run: {line}" for line in skipped]]
    (out / "summary.txt").write_text("\n".join(text) + "\n")
    print("\n".join(text), flush=True)
    return summary


@machine.script("device_check")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="gpu", help="gpu (default), gpu:N or cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the results (default: device_check/DATE-DEVICE)")
    parser.add_argument("--data", default=os.environ.get("W2V_PTB"),
                        help="ptb.zip (default: env W2V_PTB; without it a Zipf corpus)")
    parser.add_argument("--timed-words", type=int, default=100_000)
    parser.add_argument("--budget-s", type=float, default=450,
                        help="stop starting new measurements after this long (default 450)")
    parser.add_argument("--no-tests", action="store_true", help="skip tests/test_parity.py")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="check only these (default: every backend the project knows)")
    parser.add_argument("--parity", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import backends

    if args.timed_words < 1 or args.budget_s <= 0:
        parser.error("--timed-words and --budget-s must be positive")
    out = args.out or ROOT / "device_check" / (time.strftime("%Y%m%dT%H%M%S") + "-" +
                                               args.device.replace(":", ""))
    if args.parity:  # one backend's parity, in its own process (a crash stays there)
        records = parity(args.parity, args.device)
        for record in records:
            machine.append_jsonl(out / "parity.jsonl", record)
            print(json.dumps(record, sort_keys=True))
        failing = [r for r in records if not r["passed"]]
        if failing:
            print(f"parity failed: {', '.join(r['step'] for r in failing)} step(s) differ by "
                  f"up to {max(r['max_table_difference'] for r in failing):.2e} (tolerance "
                  f"{PARITY_TOLERANCE:.0e})", file=sys.stderr)
        return 1 if failing else 0
    summary = check(args.device, out, data=args.data, timed_words=args.timed_words,
                    budget_s=args.budget_s, tests=not args.no_tests,
                    names=[backends.canonical(name) for name in args.backends or []] or None)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
