"""`make bench`: every benchmark, for every backend of this environment, on every device.

    python -m benchmarks.run --env main      # .venv: numpy, torch, jax, tf; pipeline; gensim
    python -m benchmarks.run --env mxnet     # .venv-mxnet: numpy (1.23), mxnet
    python -m benchmarks.run --env main --quick   # a few minutes: fewer repeats and points
    python -m benchmarks.run --render        # only redraw the tables and plots from the JSON

Steps (`--only` picks some): `throughput` (one epoch-timed figure per backend and device),
`scaling` (centre words/s against batch and embedding size), `quality` (`w2v train` with the
chapter's settings, 5 epochs: centre words/s, loss and WordSim353 rho), `pipeline` (Zipf
corpora of 1M/10M/50M tokens, static vs resample), `peer` (gensim, 1 and 2 workers, 5 epochs;
1 worker for 10 and 20 epochs), `corpus_scale` (data build, speed and memory at 1M/17M/100M
tokens; gensim beside in the main environment). `pipeline` and `peer` run in the main
environment only. Each
measurement is its own subprocess (a fresh framework, no cross-talk of thread pools) and holds
the shared lock `/tmp/w2v-cpu.lock` (`W2V_BENCH_LOCK`; empty turns it off) only while it
measures, so do not wrap `make bench` in `flock` (it would be harmless, but hold the lock for
the whole run). JSON lines go to `benchmarks/results/*.jsonl`; `latest.md`,
`throughput.png`, `scaling_*.png` and `pipeline_scaling.*` are rendered from them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import machine

RESULTS = machine.RESULTS
ROOT = RESULTS.parent.parent
THROUGHPUT = RESULTS / "throughput.jsonl"
QUALITY = RESULTS / "quality.jsonl"
DEVICES = RESULTS / "devices.json"
STEPS = ("throughput", "scaling", "quality", "pipeline", "peer", "corpus_scale")


def _run(command: list[str], *, lock: bool = True) -> int:
    print("$", " ".join(command[2:] if command[1] == "-m" else command), flush=True)
    if not lock:
        return subprocess.run(command, cwd=ROOT).returncode
    with machine.cpu_lock():
        return subprocess.run(command, cwd=ROOT).returncode


def env_backends(environment: str) -> list[str]:
    """The installed backends this environment measures (the reference in both)."""
    import backends

    chosen = []
    for name in backends.names():
        if backends.environment(name) != environment and name != "numpy":
            continue
        if backends.missing(name):
            print(f"skip {name}: {backends.missing(name)}")
            continue
        chosen.append(name)
    return chosen


def devices_of(name: str) -> list[str]:
    """The backend's devices, asked in a subprocess (loading a framework here would stay)."""
    code = f"import backends; print(','.join(backends.load({name!r}).devices()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    found = done.stdout.strip().splitlines()
    return found[-1].split(",") if done.returncode == 0 and found else ["cpu"]


def record_devices(found: dict[str, list[str]]) -> None:
    """Merge what each backend offers into devices.json (the table says when there is no GPU)."""
    from common.io import write_json

    known = json.loads(DEVICES.read_text()) if DEVICES.exists() else {}
    known.update({name: {"devices": devices, "date": machine.now(),
                         "device_model": machine.cpu_model()} for name, devices in found.items()})
    write_json(DEVICES, known)


def step_throughput(names: list[str], found: dict[str, list[str]], repeats: int,
                    data: list[str]) -> int:
    status = 0
    for name in names:
        for device in found[name]:
            for step in ("chapter", "fast"):
                status |= _run([sys.executable, "-m", "benchmarks.throughput", "--backend",
                                name, "--device", device, "--step", step, "--repeats",
                                str(repeats), "--out", str(THROUGHPUT), *data])
        if not any(device.startswith("gpu") for device in found[name]):
            print(f"{name}: no GPU on this machine (it offers {', '.join(found[name])}); "
                  f"`--device gpu` says so and exits 2")
    return status


def step_scaling(names: list[str], found: dict[str, list[str]], quick: bool,
                 data: list[str]) -> int:
    options = (["--batch-sizes", "128", "512", "4096", "--embed-sizes", "50", "300",
                "--timed-words", "30000", "--repeats", "2"] if quick else [])
    status = 0
    for name in names:
        if name == "numpy" and os.environ.get("W2V_BENCH_ENV") == "mxnet":
            continue  # the reference's curves come from the main environment
        for device in found[name]:
            # scaling.py holds the lock per point, not for its whole run.
            status |= _run([sys.executable, "-m", "benchmarks.scaling", "--backend", name,
                            "--device", device, *options, *data], lock=False)
    return status


def quality_record(run: Path, seconds_wall: float) -> dict[str, Any]:
    """The figures of a finished `w2v train` run folder that the comparison needs."""
    from common import runs

    report = runs.load_report(run)
    evaluation = runs.load_evaluation(run)
    config = runs.load_config(run).to_dict()
    return machine.stamp({
        "benchmark": "quality", "backend": report["backend"],
        "framework_version": report["framework_version"], "device": report["device"],
        "optimizer": config.get("optimizer", "adam"), "epochs": len(report["epochs"]),
        "batch_size": config["batch_size"], "embed_size": config["embed_size"],
        "centre_words": report["centre_words"], "train_seconds": report["seconds"],
        "centre_words_per_second": report["centre_words_per_second"],
        "epoch_words_per_second": [e["words_per_second"] for e in report["epochs"]],
        "all_epochs_mean_loss": report["all_epochs_mean_loss"],
        "last_epoch_mean_loss": report["last_epoch_mean_loss"],
        "wall_seconds": seconds_wall, "evaluation": evaluation})


def step_quality(names: list[str], data: list[str]) -> int:
    import time

    w2v = str(Path(sys.executable).with_name("w2v"))
    status = 0
    folder = Path(tempfile.mkdtemp(prefix="w2v-bench-runs-"))
    try:
        for name in names:
            if name == "numpy" and os.environ.get("W2V_BENCH_ENV") == "mxnet":
                continue
            run = folder / name
            started = time.perf_counter()
            code = _run([w2v, "train", "--backend", name, "--corpus", "ptb", "--out", str(run),
                         "--overwrite", "--no-progress", *data])
            status |= code
            if code == 0:
                row = quality_record(run, time.perf_counter() - started)
                machine.append_jsonl(QUALITY, row)
                wordsim = row["evaluation"]["wordsim353"]
                print(f"{name}: {row['centre_words_per_second']:,.0f} centre words/s over 5 "
                      f"epochs ({row['train_seconds']:.1f} s), loss "
                      f"{row['all_epochs_mean_loss']:.3f}, WordSim353 rho "
                      f"{wordsim['spearman']:.3f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return status


def run_all(environment: str, *, quick: bool, only: tuple[str, ...], data_path: str | None) -> int:
    os.environ["W2V_BENCH_ENV"] = environment
    data = ["--data", data_path] if data_path else []
    names = env_backends(environment)
    found = {name: devices_of(name) for name in names}
    record_devices(found)
    status = 0
    if "throughput" in only:
        status |= step_throughput(names, found, 1 if quick else 3, data)
    if "scaling" in only:
        status |= step_scaling(names, found, quick, data)
    if "quality" in only and not quick:
        status |= step_quality(names, data)
    if environment == "main" and "pipeline" in only:
        sizes = ["200k", "1M"] if quick else ["1M", "10M", "50M"]
        status |= _run([sys.executable, "-m", "benchmarks.pipeline_scaling", "--sizes", *sizes],
                       lock=False)  # locks per point
    if environment == "main" and "peer" in only and not quick:
        status |= _run([sys.executable, "-m", "benchmarks.peer", "--workers", "1", "2", *data])
        # Longer gensim trainings: what it reaches in as many seconds as our backends take.
        status |= _run([sys.executable, "-m", "benchmarks.peer", "--workers", "1", "--epochs",
                        "10", "20", *data])
    if "corpus_scale" in only:
        sizes = ["200k", "1M"] if quick else ["1M", "17M", "100M"]
        status |= _run([sys.executable, "-m", "benchmarks.corpus_scale", "--sizes", *sizes,
                        "--backends", *[n for n in names if environment == "main" or n != "numpy"],
                        *(["--steps", "3"] if quick else []),
                        *([] if environment == "main" else ["--no-peer"])],
                       lock=False)  # locks per point
    render()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("main", "mxnet"))
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 5 scaling points, small corpora; no quality or peer")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--data", default=os.environ.get("W2V_PTB"),
                        help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--render", "--render-only", action="store_true", dest="render",
                        help="only redraw tables and plots from the JSON lines")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.render:
        render()
        return 0
    if not args.env:
        parser.error("give --env main or --env mxnet (or --render)")
    if not args.data:
        print("note: no --data and W2V_PTB unset; PTB comes from the cache or a download")
    return run_all(args.env, quick=args.quick, only=tuple(args.only), data_path=args.data)


def render() -> None:
    """Every table and plot from the JSON lines (see `benchmarks.report`)."""
    from benchmarks import report

    for written in report.render_all():
        print(f"wrote {written.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
