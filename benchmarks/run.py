"""`make bench`: both steps of every backend, the chapter's own pipeline and gensim, one commit.

    python -m benchmarks.run                      # ~40 min: everything below
    python -m benchmarks.run --quick              # < 10 min: a smoke check, fewer points
    python -m benchmarks.run --render             # only redraw the tables and plots
    python -m benchmarks.run --mxnet-python .venv-mxnet/bin/python --threads 2 --allow-dirty

One process drives every measurement as a subprocess of the Python that hosts its backend
(`--main-python` for numpy, torch, jax, tf and gensim; `--mxnet-python` for mxnet), so every
row is a fresh framework and every environment's rows take part in the same rounds:
- `throughput`: per round, one epoch of each (backend, step) on each device, the chapter
  baseline (`benchmarks/chapter_baseline.py`, the floor) and gensim with 1 and 2 workers, in
  that order; the rounds repeat the sequence (A, B, C, A, B, C ...), so that the shared
  machine's slow and fast phases meet every row, and the tables report the spread across them;
- `scaling`: centre words/s against batch size (128-4096) and embedding size (50-300), both
  steps, interleaved by rounds the same way;
- `quality`: `w2v train`, 5 epochs with the chapter's settings, both steps of every backend;
  then gensim trained for 10 and 20 epochs (what it reaches in as many seconds).
The run records one commit: a tree with uncommitted changes is refused unless `--allow-dirty`
is given (then every row says `+dirty`). Every record carries the run's id, and the tables
(`benchmarks/report.py`) show the newest run alone, so no table mixes commits. The measurements
hold the lock `/tmp/w2v-cpu.lock` (`W2V_BENCH_LOCK`; empty turns it off) one at a time.
Corpora past PTB (`corpus_scale`) and the pipeline's scaling are `make bench-corpus`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import machine

RESULTS = machine.RESULTS
ROOT = RESULTS.parent.parent
THROUGHPUT = RESULTS / "throughput.jsonl"
SCALING = RESULTS / "scaling.jsonl"
BASELINE = RESULTS / "chapter_baseline.jsonl"
PEER = RESULTS / "peer.jsonl"
QUALITY = RESULTS / "quality.jsonl"
DEVICES = RESULTS / "devices.json"
STEPS = ("throughput", "scaling", "quality")
TIERS = ("chapter", "fast")


class Plan(NamedTuple):
    """How much each part measures: the full run or `--quick`."""

    rounds: int                    # throughput rounds
    timed_words: int | None        # per throughput region; None: a whole epoch
    baseline_words: int | None     # the floor's timed centre words; None: a whole epoch
    scaling_rounds: int
    scaling_words: int
    batch_sizes: tuple[int, ...]
    embed_sizes: tuple[int, ...]
    quality: bool


FULL = Plan(3, None, None, 2, 50_000, (128, 256, 512, 1024, 2048, 4096), (50, 100, 200, 300),
            True)
QUICK = Plan(2, 60_000, 60_000, 1, 20_000, (128, 2048), (300,), False)


class Python(NamedTuple):
    """An environment's interpreter and the backends it hosts here (with their devices)."""

    path: str
    backends: dict[str, list[str]]


class DirtyTree(Exception):
    """The working tree has uncommitted changes and --allow-dirty was not given."""


def tree_commit(allow_dirty: bool) -> str:
    """The short commit the run records, checked once; a dirty tree is refused unless allowed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=ROOT).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if line.strip()]
    if changed and not allow_dirty:
        shown = ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
        raise DirtyTree(f"the working tree has uncommitted changes ({shown}): commit them so "
                        f"that the rows record one commit, or give --allow-dirty (the rows are "
                        f"then marked {head}+dirty)")
    return head + ("+dirty" if changed else "")


def child_env() -> dict[str, str]:
    """The environment of every measurement: this tree's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(python: str, args: list[str], *, lock: bool = True) -> int:
    """One measurement in a fresh process of `python`, under the benchmark lock."""
    print("$", Path(python).parent.parent.name, " ".join(args), flush=True)
    command = [python, *args]
    if not lock:
        return subprocess.run(command, cwd=ROOT, env=child_env()).returncode
    with machine.cpu_lock():
        return subprocess.run(command, cwd=ROOT, env=child_env()).returncode


DISCOVER = """
import json, backends
found = {}
for name in backends.names():
    if backends.environment(name) != ENV and name != "numpy":
        continue
    why = backends.missing(name)
    if why:
        found[name] = why
        continue
    try:
        found[name] = backends.load(name).devices()
    except Exception as error:  # a framework that fails to load is reported, not fatal
        found[name] = f"{type(error).__name__}: {error}".splitlines()[0]
print(json.dumps(found))
"""


def discover(python: str, environment: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The backends `python` can run, with their devices, and why the others cannot."""
    done = subprocess.run([python, "-c", DISCOVER.replace("ENV", repr(environment))],
                          capture_output=True, text=True, cwd=ROOT, env=child_env(),
                          timeout=600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, {environment: f"{python} failed: {tail}"}
    found = json.loads(lines[-1])
    usable = {name: value for name, value in found.items() if isinstance(value, list)}
    return usable, {name: value for name, value in found.items() if isinstance(value, str)}


def record_devices(found: dict[str, list[str]]) -> None:
    """Merge what each backend offers into devices.json (the table says when there is no GPU)."""
    from common.io import write_json

    known = json.loads(DEVICES.read_text()) if DEVICES.exists() else {}
    known.update({name: {"devices": devices, "date": machine.now(),
                         "device_model": machine.cpu_model()} for name, devices in found.items()})
    write_json(DEVICES, known)


def rows_of(pythons: dict[str, Python]) -> list[tuple[str, str, str, str]]:
    """(python, backend, step, device) for every backend, both steps, every device; numpy
    from the main environment only (its figures do not depend on the environment)."""
    rows = []
    for environment, python in pythons.items():
        for name, devices in python.backends.items():
            if name == "numpy" and environment != "main":
                continue
            rows += [(python.path, name, step, device) for step in TIERS for device in devices]
    order = ("numpy", "torch", "jax", "tf", "mxnet")
    return sorted(rows, key=lambda r: (order.index(r[1]) if r[1] in order else 9, r[1], r[3],
                                       TIERS.index(r[2])))


def step_throughput(pythons: dict[str, Python], plan: Plan, common: list[str],
                    threads: list[str]) -> int:
    main_python = pythons["main"].path
    status = 0
    timed = ["--timed-words", str(plan.timed_words)] if plan.timed_words else []
    for round_number in range(1, plan.rounds + 1):
        print(f"== throughput, round {round_number} of {plan.rounds}", flush=True)
        for python, name, step, device in rows_of(pythons):
            status |= run_child(python, ["-m", "benchmarks.throughput", "--backend", name,
                                         "--step", step, "--device", device, "--repeats", "1",
                                         "--round", str(round_number), "--out", str(THROUGHPUT),
                                         *timed, *threads, *common])
        status |= run_child(main_python, [
            "-m", "benchmarks.chapter_baseline", "--out", str(BASELINE), *threads, *common,
            *(["--timed-words", str(plan.baseline_words)] if plan.baseline_words else [])])
        status |= run_child(main_python, ["-m", "benchmarks.peer", "--workers", "1", "2",
                                          "--out", str(PEER), *common])
    return status


def step_scaling(pythons: dict[str, Python], plan: Plan, common: list[str],
                 threads: list[str]) -> int:
    status = 0
    points = ["--batch-sizes", *map(str, plan.batch_sizes), "--embed-sizes",
              *map(str, plan.embed_sizes), "--timed-words", str(plan.scaling_words),
              "--repeats", "1"]
    for round_number in range(1, plan.scaling_rounds + 1):
        print(f"== scaling, round {round_number} of {plan.scaling_rounds}", flush=True)
        for python, name, step, device in rows_of(pythons):
            # scaling.py holds the lock per point, not for its whole run.
            status |= run_child(python, ["-m", "benchmarks.scaling", "--backend", name,
                                         "--step", step, "--device", device, "--round",
                                         str(round_number), "--out", str(SCALING), *points,
                                         *threads, *common], lock=False)
    return status


def quality_record(run: Path, seconds_wall: float) -> dict[str, Any]:
    """The figures of a finished `w2v train` run folder that the comparison needs."""
    from common import runs

    report = runs.load_report(run)
    evaluation = runs.load_evaluation(run)
    config = runs.load_config(run).to_dict()
    row = machine.stamp({
        "benchmark": "quality", "backend": report["backend"], "step": report.get("step"),
        "framework_version": report["framework_version"], "device": report["device"],
        "optimizer": config.get("optimizer", "adam"), "epochs": len(report["epochs"]),
        "batch_size": config["batch_size"], "embed_size": config["embed_size"],
        "threads_asked": config.get("threads", 0),
        "centre_words": report["centre_words"], "train_seconds": report["seconds"],
        "centre_words_per_second": report["centre_words_per_second"],
        "epoch_words_per_second": [e["words_per_second"] for e in report["epochs"]],
        "all_epochs_mean_loss": report["all_epochs_mean_loss"],
        "last_epoch_mean_loss": report["last_epoch_mean_loss"],
        "wall_seconds": seconds_wall, "evaluation": evaluation})
    # The training's own thread count (the stamp's is this driver's).
    return {**row, "threads": config.get("threads") or row["threads"]}


def step_quality(pythons: dict[str, Python], common: list[str], threads: list[str]) -> int:
    status = 0
    folder = Path(tempfile.mkdtemp(prefix="w2v-bench-runs-"))
    try:
        for python, name, step, device in rows_of(pythons):
            run = folder / f"{name}-{step}-{device.replace(':', '')}"
            started = time.perf_counter()
            code = run_child(python, ["-m", "common.cli", "train", "--backend", name, "--step",
                                      step, "--device", device, "--corpus", "ptb", "--out",
                                      str(run), "--overwrite", "--no-progress", *threads,
                                      *common])
            status |= code
            if code == 0:
                row = quality_record(run, time.perf_counter() - started)
                machine.append_jsonl(QUALITY, row)
                wordsim = row["evaluation"]["wordsim353"]
                print(f"{name} {step}: {row['centre_words_per_second']:,.0f} centre words/s over "
                      f"5 epochs ({row['train_seconds']:.1f} s), loss "
                      f"{row['all_epochs_mean_loss']:.3f}, WordSim353 rho "
                      f"{wordsim['spearman']:.3f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Longer gensim trainings: what it reaches in as many seconds as our backends take.
    status |= run_child(pythons["main"].path, ["-m", "benchmarks.peer", "--workers", "1",
                                               "--epochs", "10", "20", "--out", str(PEER),
                                               *common])
    return status


def default_mxnet_python() -> str | None:
    path = ROOT / ".venv-mxnet" / "bin" / "python"
    return str(path) if path.exists() else None


def run_all(args: argparse.Namespace) -> int:
    commit = tree_commit(args.allow_dirty)
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{commit}-{uuid.uuid4().hex[:6]}"
    os.environ[machine.RUN_ENV], os.environ[machine.COMMIT_ENV] = run_id, commit
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = plan._replace(rounds=args.rounds)
    common = ["--data", args.data] if args.data else []
    threads = ["--threads", str(args.threads)] if args.threads else []
    pythons, unusable = {}, {}
    for environment, path in (("main", args.main_python), ("mxnet", args.mxnet_python)):
        if not path:
            unusable[environment] = "no interpreter given (--mxnet-python) or found"
            continue
        found, why = discover(path, environment)
        unusable.update(why)
        if found:
            pythons[environment] = Python(path, found)
    if "main" not in pythons:
        print(f"benchmarks.run: error: the main environment cannot run: {unusable}",
              file=sys.stderr)
        return 2
    for name, why in sorted(unusable.items()):
        print(f"skip {name}: {why}", flush=True)
    record_devices({name: devices for python in pythons.values()
                    for name, devices in python.backends.items()})
    print(f"run {run_id}: {len(rows_of(pythons))} rows "
          f"({', '.join(f'{r[1]} {r[2]} {r[3]}' for r in rows_of(pythons))})", flush=True)
    started, status = time.perf_counter(), 0
    if "throughput" in args.only:
        status |= step_throughput(pythons, plan, common, threads)
    if "scaling" in args.only:
        status |= step_scaling(pythons, plan, common, threads)
    if "quality" in args.only and plan.quality:
        status |= step_quality(pythons, common, threads)
    render()
    print(f"run {run_id} done in {(time.perf_counter() - started) / 60:.1f} min"
          f"{'' if status == 0 else ' (some measurements failed: see above)'}", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="under 10 minutes: 2 short rounds, 3 scaling points, no 5-epoch run")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--rounds", type=int, default=0, help="throughput rounds (default 3; "
                        "--quick 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for every measurement (0: every CPU)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="measure a tree with uncommitted changes (rows marked +dirty)")
    parser.add_argument("--main-python", default=sys.executable,
                        help="the interpreter of numpy, torch, jax, tf and gensim (default: "
                             "this one)")
    parser.add_argument("--mxnet-python", default=default_mxnet_python(),
                        help="the interpreter of mxnet (default: .venv-mxnet/bin/python)")
    parser.add_argument("--data", default=os.environ.get("W2V_PTB"),
                        help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--render", "--render-only", action="store_true", dest="render",
                        help="only redraw tables and plots from the JSON lines")
    args = parser.parse_args(argv)
    if args.threads < 0 or args.rounds < 0:
        parser.error("--threads and --rounds must be non-negative integers")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.render:
        render()
        return 0
    if not args.data:
        print("note: no --data and W2V_PTB unset; PTB comes from the cache or a download")
    try:
        return run_all(args)
    except DirtyTree as error:
        print(f"benchmarks.run: error: {error}", file=sys.stderr)
        return 2


def render() -> None:
    """Every table and plot from the JSON lines (see `benchmarks.report`)."""
    from benchmarks import report

    for written in report.render_all():
        print(f"wrote {written.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
