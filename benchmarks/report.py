"""Tables and plots of every benchmark, rendered from the JSON lines in `benchmarks/results/`.

    python -m benchmarks.report       # the same as `python -m benchmarks.run --render`

Only the newest record of each configuration is shown; the JSON lines keep the history.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import corpus_scale, machine, pipeline_scaling, scaling

RESULTS = machine.RESULTS
TARGETS = {"torch": 120_000, "jax": 120_000, "tf": 120_000, "mxnet": 80_000, "numpy": 15_000}
# The chapter step (framework autodiff and stock Adam): every framework, none for the oracle.
CHAPTER_TARGETS = {"torch": 40_000, "jax": 40_000, "tf": 40_000, "mxnet": 40_000}


def _newest(rows: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    chosen: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        chosen[tuple(row.get(field) for field in fields)] = row
    return list(chosen.values())


def throughput_rows() -> list[dict[str, Any]]:
    """The newest epoch-timed record per backend, version, step, optimizer, device and sizes."""
    rows = [dict(r, step=r.get("step", "fast"))  # records from before --step timed `fast`
            for r in machine.read_jsonl(RESULTS / "throughput.jsonl")
            if r.get("timed", "epoch") == "epoch"]
    rows = _newest(rows, "backend", "framework_version", "step", "optimizer", "device",
                   "batch_size", "embed_size")
    return sorted(rows, key=lambda r: (r["device"], -r["centre_words_per_second"]))


def quality_rows() -> list[dict[str, Any]]:
    rows = _newest(machine.read_jsonl(RESULTS / "quality.jsonl"), "backend",
                   "framework_version", "device", "optimizer")
    return sorted(rows, key=lambda r: -r["centre_words_per_second"])


def peer_rows() -> list[dict[str, Any]]:
    rows = _newest(machine.read_jsonl(RESULTS / "peer.jsonl"), "gensim_version", "workers",
                   "epochs")
    return sorted(rows, key=lambda r: (r["epochs"], r["workers"]))


def _spread(row: dict[str, Any]) -> str:
    return (f"{row['centre_words_per_second']:,.0f} ({row['centre_words_per_second_min']:,.0f}"
            f"-{row['centre_words_per_second_max']:,.0f})")


def throughput_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | version | step | optimizer | device | model | threads | batch | embed | "
             "centre words/s, median (min-max) | target | ms/step | warm-up s | peak RSS MiB | "
             "loss, timed epoch | date | commit |", "|---" * 17 + "|"]
    for r in rows:
        targets = CHAPTER_TARGETS if r["step"] == "chapter" else TARGETS
        target = targets.get(r["backend"]) if r["device"] == "cpu" else None
        verdict = "" if target is None else (
            f"{target:,} {'met' if r['centre_words_per_second'] >= target else 'NOT met'}")
        lines.append(
            f"| {r['backend']} | {r['framework_version']} | {r['step']} | {r['optimizer']} | "
            f"{r['device']} | "
            f"{r.get('device_model', r.get('cpu', '?'))} | {r.get('threads', '?')} | "
            f"{r['batch_size']} | {r['embed_size']} | {_spread(r)} | {verdict} | "
            f"{r['ms_per_step']:.2f} | {r['warmup_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['loss_after_timed_epoch']:.3f} | {r['date'][:10]} | {r['commit']} |")
    return "\n".join(lines)


def _rho(evaluation: dict[str, Any], name: str) -> str:
    score = evaluation.get(name)
    return "-" if not score else f"{score['spearman']:.3f} ({score['covered']}/{score['total']})"


def comparison_table(quality: list[dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    """Our backends' 5-epoch trainings beside gensim's, speed and vector quality together."""
    lines = ["| trainer | optimiser | device | epochs | centre words/s | training s | "
             "WordSim353 rho (pairs) | SimLex-999 rho (pairs) | all-epoch mean loss | date |",
             "|---" * 10 + "|"]
    for r in quality:
        loss = r["all_epochs_mean_loss"]
        check = "" if 0.40 <= loss <= 0.42 else " (outside 0.40-0.42)"
        lines.append(
            f"| w2v-multi {r['backend']} {r['framework_version']} | Adam, batch "
            f"{r['batch_size']} | {r['device']} | {r['epochs']} | "
            f"{r['centre_words_per_second']:,.0f} | {r['train_seconds']:.1f} | "
            f"{_rho(r['evaluation'], 'wordsim353')} | {_rho(r['evaluation'], 'simlex999')} | "
            f"{loss:.3f}{check} | {r['date'][:10]} |")
    for r in peers:
        lines.append(
            f"| gensim {r['gensim_version']}, {r['workers']} worker"
            f"{'s' if r['workers'] > 1 else ''} | SGD, lr 0.025 decaying | cpu | {r['epochs']} | "
            f"{r['centre_words_per_second']:,.0f} | {r['train_seconds']:.1f} | "
            f"{_rho(r.get('evaluation', {}), 'wordsim353')} | "
            f"{_rho(r.get('evaluation', {}), 'simlex999')} | - | {r['date'][:10]} |")
    return "\n".join(lines)


def verdict(quality: list[dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    """The plain sentence the issue asks for: who is faster, who gives better vectors."""
    five = [p for p in peers if p["epochs"] == 5 and p.get("evaluation")]
    ours = [q for q in quality if q["epochs"] == 5 and q["device"] == "cpu"]
    if not five or not ours:
        return ""
    fastest_peer = max(five, key=lambda p: p["centre_words_per_second"])
    fastest = max(ours, key=lambda q: q["centre_words_per_second"])
    best_peer = max(five, key=lambda p: p["evaluation"]["wordsim353"]["spearman"])
    best = max(ours, key=lambda q: q["evaluation"]["wordsim353"]["spearman"])
    speed_ratio = fastest_peer["centre_words_per_second"] / fastest["centre_words_per_second"]
    plural = "s" if fastest_peer["workers"] > 1 else ""
    faster = (f"gensim ({fastest_peer['workers']} worker{plural}) is {speed_ratio:.1f}x faster "
              f"than the fastest backend here ({fastest['backend']})"
              if speed_ratio > 1 else
              f"the fastest backend here ({fastest['backend']}) is {1 / speed_ratio:.1f}x faster "
              f"than gensim")
    rho_peer = best_peer["evaluation"]["wordsim353"]["spearman"]
    rho_ours = best["evaluation"]["wordsim353"]["spearman"]
    better = ("w2v-multi's vectors are better" if rho_ours > rho_peer else
              "gensim's vectors are better")
    sentence = (f"After the same 5 epochs on the same PTB sentences, {faster} in centre words "
                f"per second, and {better} on WordSim353 (rho {rho_ours:.3f} for "
                f"{best['backend']} after {best['train_seconds']:.1f} s of training, against "
                f"{rho_peer:.3f} for gensim after {best_peer['train_seconds']:.1f} s).")
    # Per second of training: gensim given at least as many seconds as our best run took.
    longer = [p for p in peers if p.get("evaluation") and p["epochs"] > 5
              and p["train_seconds"] >= 0.8 * best["train_seconds"]]
    if longer:
        match = min(longer, key=lambda p: p["train_seconds"])
        rho_match = match["evaluation"]["wordsim353"]["spearman"]
        sentence += (f" Per second of training: given {match['train_seconds']:.1f} s "
                     f"({match['epochs']} epochs, {match['workers']} worker"
                     f"{'s' if match['workers'] > 1 else ''}), gensim reaches rho "
                     f"{rho_match:.3f}, {'above' if rho_match > rho_ours else 'below'} "
                     f"{best['backend']}'s {rho_ours:.3f} in {best['train_seconds']:.1f} s: "
                     f"{'gensim' if rho_match > rho_ours else 'w2v-multi'} gives the better "
                     f"vectors per second.")
    return sentence


def plot_throughput(rows: list[dict[str, Any]], peers: list[dict[str, Any]]) -> Path | None:
    """throughput.png: one panel of bars per device; gensim's rate beside the CPU's bars."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plotting import save_figure

    devices = sorted({r["device"] for r in rows})
    figure, axes = plt.subplots(1, len(devices), figsize=(6.5 * len(devices), 3.6), dpi=120,
                                squeeze=False)
    for axis, device in zip(axes[0], devices):
        chosen = [r for r in rows if r["device"] == device
                  and (r["batch_size"], r["embed_size"]) == (512, 100)]
        labels = [f"{r['backend']}\n{r['framework_version']}" for r in chosen]
        values = [r["centre_words_per_second"] for r in chosen]
        errors = [[v - r["centre_words_per_second_min"] for v, r in zip(values, chosen)],
                  [r["centre_words_per_second_max"] - v for v, r in zip(values, chosen)]]
        axis.bar(labels, values, yerr=errors, capsize=3, color="tab:blue",
                 label="w2v-multi, dense Adam (median of 3 epochs, min-max)")
        for r in chosen:
            if device == "cpu" and r["backend"] in TARGETS:
                index = labels.index(f"{r['backend']}\n{r['framework_version']}")
                axis.hlines(TARGETS[r["backend"]], index - 0.4, index + 0.4, colors="black",
                            linestyles="--", linewidth=1)
        if device == "cpu":
            five = [p for p in peers if p["epochs"] == 5]
            if five:
                axis.bar([f"gensim\n{p['workers']} worker{'s' if p['workers'] > 1 else ''}"
                          for p in five], [p["centre_words_per_second"] for p in five],
                         color="tab:gray", label="gensim, SGD (5 epochs)")
        axis.set_title(f"{device} ({chosen[0].get('device_model', '?') if chosen else '?'}): "
                       f"centre words/s, PTB, B=512, E=100; dashed: target", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=6)
    return save_figure(figure, RESULTS / "throughput.png")


def devices_note() -> str:
    path = RESULTS / "devices.json"
    if not path.exists():
        return ""
    known = json.loads(path.read_text())
    gpus = {name: [d for d in entry["devices"] if d != "cpu"] for name, entry in known.items()}
    if not any(gpus.values()):
        return (f"Devices: no GPU on this machine (every backend offers only `cpu`: "
                f"{', '.join(sorted(known))}); `--device gpu` is a one-line error, exit 2.")
    return "Devices: " + "; ".join(f"{name}: cpu, {', '.join(found)}" if found else f"{name}: cpu"
                                   for name, found in sorted(gpus.items()))


def render_all() -> list[Path]:
    """latest.md, throughput.png, scaling_*.png, pipeline_scaling.{png,md},
    corpus_scale.{png,md}."""
    from common.io import write_text

    rows, quality, peers = throughput_rows(), quality_rows(), peer_rows()
    written = [p for p in [plot_throughput(rows, peers)] if p]
    written += scaling.render()
    written += pipeline_scaling.render()
    written += corpus_scale.render()
    cpu = rows[0].get("cpu", "?") if rows else machine.cpu_model()
    sections = [
        ("", f"Unit: **centre words per second** (the chapter's \"tokens\"): real (unpadded) "
             f"examples trained per second of a timed region, measured per epoch; never the "
             f"chapter's all-epochs-over-last-epoch ratio. gensim's figure is its own count of "
             f"effective words (kept after `min_count` and subsampling) per second of "
             f"`train()`. CPU: {cpu}."),
        ("", devices_note()),
        ("Throughput (PTB, dense Adam, warm-up timed apart, median of 3 epochs)",
         throughput_table(rows) if rows else ""),
        ("Speed and vector quality after the chapter's 5 epochs, beside gensim",
         "\n\n".join(part for part in (comparison_table(quality, peers) if quality or peers
                                         else "", verdict(quality, peers)) if part)),
        ("Scaling (thousands of centre words/s; median of 3 regions of 100,000 centre words "
         "after warm-up; B batch size, E embedding size)", scaling.table()),
        ("Data pipeline on Zipf corpora (`pipeline_scaling.md` says how)",
         pipeline_scaling.table()),
        ("Corpora past PTB: 1M to 100M tokens (`corpus_scale.md` says how)",
         corpus_scale.table()),
    ]
    text = "# Benchmarks (rendered from the JSON lines by `python -m benchmarks.run --render`)\n"
    for heading, body in sections:
        if body:
            text += (f"\n## {heading}\n" if heading else "") + f"\n{body}\n"
    written.append(write_text(RESULTS / "latest.md", text))
    return written


if __name__ == "__main__":
    for path in render_all():
        print(f"wrote {path}")
    sys.exit(0)
