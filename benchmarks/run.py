"""`make bench`: throughput of every backend installed in this environment, on every device.

    python -m benchmarks.run --env main      # .venv: numpy, torch, jax, tf
    python -m benchmarks.run --env mxnet     # .venv-mxnet: numpy, mxnet

Each backend runs in its own subprocess (a fresh framework, no cross-talk of thread pools),
appends one JSON line per measurement to `benchmarks/results/throughput.jsonl`, and the table
`benchmarks/results/latest.md` and chart `throughput.png` are rendered again from all lines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
JSONL = RESULTS / "throughput.jsonl"


def _devices(name: str) -> list[str]:
    import backends

    return backends.load(name).devices()


def run_all(environment: str, repeats: int) -> int:
    import backends

    status = 0
    for name in backends.names():
        if backends.environment(name) != environment and name != "numpy":
            continue
        if backends.missing(name):
            print(f"skip {name}: {backends.missing(name)}")
            continue
        for device in _devices(name):
            command = [sys.executable, "-m", "benchmarks.throughput", "--backend", name,
                       "--device", device, "--repeats", str(repeats), "--out", str(JSONL)]
            print("$", " ".join(command[1:]), flush=True)
            done = subprocess.run(command, cwd=RESULTS.parent.parent)
            status |= done.returncode
    render()
    return status


def _latest_rows() -> list[dict]:
    """The newest measurement per (backend, optimizer, device, batch, embed size)."""
    rows: dict[tuple, dict] = {}
    if JSONL.exists():
        for line in JSONL.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                key = (row["backend"], row["framework_version"], row["optimizer"], row["device"],
                       row["batch_size"],
                       row["embed_size"])
                rows[key] = row
    return sorted(rows.values(), key=lambda r: (r["device"], -r["centre_words_per_second"]))


def render() -> None:
    """latest.md (a table) and throughput.png (bars per device) from the JSON lines."""
    from common.io import write_text

    rows = _latest_rows()
    lines = ["| backend | version | optimizer | device | centre words/s (min-max) | ms/step "
             "| warm-up s | peak RSS MiB | loss after timed epoch | date | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['framework_version']} | {r['optimizer']} | {r['device']} | "
            f"{r['centre_words_per_second']:,.0f} ({r['centre_words_per_second_min']:,.0f}-"
            f"{r['centre_words_per_second_max']:,.0f}) | {r['ms_per_step']:.2f} | "
            f"{r['warmup_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['loss_after_timed_epoch']:.3f} | {r['date'][:10]} | {r['commit']} |")
    cpu = rows[0]["cpu"] if rows else "unknown"
    header = (f"Centre words per second (the chapter's 'tokens'), median of timed epochs on PTB "
              f"after warm-up; batch 512, embed 100 unless noted. CPU: {cpu}, "
              f"{rows[0]['threads'] if rows else '?'} threads.\n\n")
    write_text(RESULTS / "latest.md", header + "\n".join(lines) + "\n")
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import atomic_path

    devices = sorted({r["device"] for r in rows})
    figure, axes = plt.subplots(1, len(devices), figsize=(5 * len(devices), 3.2), dpi=120,
                                squeeze=False)
    for axis, device in zip(axes[0], devices):
        chosen = [r for r in rows if r["device"] == device]
        labels = [f"{r['backend']} {r['framework_version']}\n{r['optimizer']}" for r in chosen]
        values = [r["centre_words_per_second"] for r in chosen]
        errors = [[v - r["centre_words_per_second_min"] for v, r in zip(values, chosen)],
                  [r["centre_words_per_second_max"] - v for v, r in zip(values, chosen)]]
        axis.bar(labels, values, yerr=errors, capsize=3, color="tab:blue")
        axis.set_title(f"{device}: centre words/s (PTB, B=512, E=100)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    with atomic_path(RESULTS / "throughput.png", suffix=".png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=("main", "mxnet"), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("W2V_PTB"):
        print("note: W2V_PTB is unset; PTB comes from the cache or a download")
    if args.render_only:
        render()
        return 0
    return run_all(args.env, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
