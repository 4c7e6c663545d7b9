"""Centre words/s against data-parallel replicas (`--data-parallel N`), per backend and step.

    python -m benchmarks.replicas --backend torch [--replicas 1 2] [--steps chapter fast]
    python -m benchmarks.replicas --render        # only rewrite results/replicas.md

Each point is a real `w2v train --data-parallel N` on PTB with the chapter's settings (so
torch's replicas are processes over gloo, started by the CLI; the others' are devices in one
process), `--epochs 2`: the figure is the second epoch's centre words/s, after compilation
and warm-up, as the run reports it. It also records what every replica all-reduces per step
with dense gradients, 2 x V x E x 4 bytes (both (V, E) float32 tables). Records go to
`benchmarks/results/replicas.jsonl`; each run holds the shared benchmark lock.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import machine

JSONL = machine.RESULTS / "replicas.jsonl"
TABLE = machine.RESULTS / "replicas.md"
ROOT = Path(__file__).resolve().parents[1]


def measure(backend: str, step: str, replicas: int, *, data_path: str | None,
            epochs: int = 2) -> dict[str, Any]:
    """One `w2v train` run; its last epoch's centre words/s and the bytes all-reduced."""
    from common import runs
    from common.parallel import bytes_all_reduced
    from common.vocab import Vocab

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        command = [sys.executable, "-m", "common.cli", "train", "--backend", backend,
                   "--step", step, "--data-parallel", str(replicas), "--corpus", "ptb",
                   "--epochs", str(epochs), "--out", str(run), "--no-progress", "--query"]
        if data_path:
            command += ["--data", data_path]
        with machine.cpu_lock():
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[2:])} failed: {done.stderr.strip()}")
        report = json.loads((run / runs.REPORT).read_text())
        config = json.loads((run / runs.CONFIG).read_text())
        vocab = len(Vocab.load(run / runs.VOCAB))
    last = report["epochs"][-1]
    return machine.stamp({
        "benchmark": "replicas", "backend": backend, "step": step, "replicas": replicas,
        "device": "cpu", "centre_words_per_second": last["words_per_second"],
        "epoch_seconds": last["seconds"], "last_epoch_loss": last["mean_loss"],
        "vocab_size": vocab, "embed_size": config["embed_size"],
        "batch_size": config["batch_size"],
        "bytes_all_reduced_per_step": bytes_all_reduced(vocab, config["embed_size"])
        if replicas > 1 else 0,
    })


def render(rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table: the latest record per (backend, step, replicas), N = 1 beside N."""
    latest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        latest[row["backend"], row["step"], row["replicas"]] = row
    lines = ["| backend | step | replicas | centre words/s | vs 1 replica | bytes all-reduced "
             "per step | epoch loss |", "|---|---|---|---|---|---|---|"]
    for (backend, step, replicas), row in sorted(latest.items()):
        single = latest.get((backend, step, 1))
        ratio = (f"{row['centre_words_per_second'] / single['centre_words_per_second']:.2f}x"
                 if single else "")
        moved = row["bytes_all_reduced_per_step"]
        lines.append(f"| {backend} | {step} | {replicas} | "
                     f"{row['centre_words_per_second']:,.0f} | {ratio} | "
                     f"{f'{moved / 2**20:.1f} MiB ({moved:,})' if moved else '0'} | "
                     f"{row['last_epoch_loss']:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["torch", "jax", "tf"])
    parser.add_argument("--steps", nargs="+", default=["chapter", "fast"])
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--data", default=os.environ.get("W2V_PTB"))
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args(argv)
    if not args.render:
        for backend in args.backend:
            for step in args.steps:
                for replicas in args.replicas:
                    row = measure(backend, step, replicas, data_path=args.data)
                    print(f"{backend} {step} x{replicas}: "
                          f"{row['centre_words_per_second']:,.0f} centre words/s, "
                          f"{row['bytes_all_reduced_per_step']:,} bytes all-reduced per step",
                          flush=True)
                    machine.append_jsonl(JSONL, row)
    table = render(machine.read_jsonl(JSONL))
    TABLE.write_text("\n".join(table) + "\n", encoding="utf-8")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
