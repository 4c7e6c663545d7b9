"""Tables and plots of every benchmark, rendered from the JSON lines in `benchmarks/results/`.

    python -m benchmarks.report       # the same as `python -m benchmarks.run --render`

Only the newest record of each configuration is shown; the JSON lines keep the history.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import corpus_scale, machine, pipeline_scaling, scaling

RESULTS = machine.RESULTS
# The tables' order: the oracle, then the chapter's framework, then the others.
BACKEND_ORDER = ("numpy", "torch", "jax", "tf", "mxnet")
STEP_ORDER = ("chapter", "fast")


def _newest(rows: list[dict[str, Any]], *fields: str) -> list[dict[str, Any]]:
    chosen: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        chosen[tuple(row.get(field) for field in fields)] = row
    return list(chosen.values())


def run_key(row: dict[str, Any]) -> str:
    """The benchmark run a record belongs to (`benchmarks.run` stamps one id on all its rows;
    older records fall back to their commit)."""
    return row.get("run") or row.get("commit", "?")


def of_newest_run(rows: list[dict[str, Any]], run: str | None = None) -> list[dict[str, Any]]:
    """The records of run `run` (default: the newest record's): one run, one commit."""
    if not rows:
        return []
    run = run or run_key(rows[-1])
    return [row for row in rows if run_key(row) == run]


def across_rounds(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per configuration: the median of its rounds' figures, their min and max.

    Each round's record holds its own median/min/max (one region per round in `make bench`);
    across rounds the rate is the median of the rounds' medians and the spread runs from the
    lowest min to the highest max, so it shows the machine's slow and fast phases.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(field) for field in fields), []).append(row)
    merged = []
    for chosen in groups.values():
        row = dict(chosen[-1])
        for name in ("centre_words_per_second", "ms_per_step"):
            if name in row:
                row[name] = statistics.median(r[name] for r in chosen)
                row[f"{name}_min"] = min(r.get(f"{name}_min", r[name]) for r in chosen)
                row[f"{name}_max"] = max(r.get(f"{name}_max", r[name]) for r in chosen)
        for name in ("warmup_seconds", "data_build_seconds", "train_seconds"):
            if name in row:
                row[name] = statistics.median(r[name] for r in chosen)
        if "peak_rss_mib" in row:
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in chosen)
        row["rounds"] = len(chosen)
        merged.append(row)
    return merged


def order(row: dict[str, Any]) -> tuple:
    """The tables' row order: device, then numpy, torch, jax, tf, mxnet, then chapter, fast."""
    backend = row["backend"]
    return (row["device"], BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else 99,
            backend, STEP_ORDER.index(row["step"]) if row.get("step") in STEP_ORDER else 9)


def throughput_rows() -> list[dict[str, Any]]:
    """The newest run's rows, one per backend, step and device, over its rounds (whole epochs;
    `--quick` times fewer steps)."""
    rows = across_rounds(of_newest_run(machine.read_jsonl(RESULTS / "throughput.jsonl")), ("backend", "framework_version", "step",
                                               "optimizer", "device", "batch_size",
                                               "embed_size"))
    return sorted(rows, key=order)


def baseline_row(run: str | None = None) -> dict[str, Any] | None:
    """The chapter baseline (the floor) of run `run`, over its rounds."""
    rows = of_newest_run(machine.read_jsonl(RESULTS / "chapter_baseline.jsonl"), run)
    merged = across_rounds(rows, ("backend",))
    return merged[0] if merged else None


def quality_rows(run: str | None = None) -> list[dict[str, Any]]:
    rows = _newest(of_newest_run(machine.read_jsonl(RESULTS / "quality.jsonl"), run),
                   "backend", "framework_version", "step", "device", "optimizer")
    return sorted(rows, key=lambda r: order(dict(r, step=r.get("step", "fast"))))


def peer_rows(run: str | None = None) -> list[dict[str, Any]]:
    """gensim's rows of run `run`: the rounds' 5-epoch trainings merged, longer ones as they are."""
    rows = of_newest_run(machine.read_jsonl(RESULTS / "peer.jsonl"), run)
    merged = across_rounds(rows, ("gensim_version", "workers", "epochs"))
    return sorted(merged, key=lambda r: (r["epochs"], r["workers"]))


def _spread(row: dict[str, Any], name: str = "centre_words_per_second", digits: int = 0) -> str:
    return (f"{row[name]:,.{digits}f} ({row[f'{name}_min']:,.{digits}f}"
            f"-{row[f'{name}_max']:,.{digits}f})")


def _ratio(value: float, against: dict[str, Any] | None) -> str:
    if not against:
        return "-"
    ratio = value / against["centre_words_per_second"]
    return f"{ratio:.2f}x" if ratio < 1 else f"{ratio:.1f}x"


def gensim_five(peers: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """gensim's 5-epoch rows by worker count (1 and 2): the peers every row is read against."""
    return {p["workers"]: p for p in peers if p["epochs"] == 5}


def throughput_table(rows: list[dict[str, Any]], floor: dict[str, Any] | None,
                     peers: list[dict[str, Any]]) -> str:
    """Both steps of every backend with their work disclosed, the floor and gensim beside."""
    five = gensim_five(peers)
    lines = ["| backend | step | device | slots computed per step | native code | steps per "
             "call | threads | ms/step, median (min-max) | centre words/s, median (min-max) | "
             "x floor | x gensim 1 worker | x gensim 2 workers | warm-up s | peak RSS MiB | "
             "loss, timed epoch |", "|---" * 15 + "|"]
    for r in rows:
        rate = r["centre_words_per_second"]
        lines.append(
            f"| {r['backend']} {r['framework_version']} | {r['step']} | {r['device']} | "
            f"{r['slots_per_step']:,.0f} ({r['slots']}) | {r['native_code']} | "
            f"{r['steps_per_call']} | {r['threads']} | {_spread(r, 'ms_per_step', 2)} | "
            f"{_spread(r)} | **{_ratio(rate, floor)}** | {_ratio(rate, five.get(1))} | "
            f"{_ratio(rate, five.get(2))} | {r['warmup_seconds']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {r['loss_after_timed_epoch']:.3f} |")
    if floor:
        lines.append(
            f"| chapter baseline (torch {floor['framework_version']}, plain-Python pipeline) "
            f"| seed | cpu | padded BxL | none | 1 | {floor['threads']} | - | {_spread(floor)} | "
            f"1.0x | {_ratio(floor['centre_words_per_second'], five.get(1))} | "
            f"{_ratio(floor['centre_words_per_second'], five.get(2))} | data build "
            f"{floor['data_build_seconds']:.1f} s | {floor['peak_rss_mib']:.0f} | "
            f"{floor['loss']:.3f} |")
    for workers, p in sorted(five.items()):
        rss = f"{p['peak_rss_mib']:.0f}" if "peak_rss_mib" in p else "-"
        lines.append(
            f"| gensim {p['gensim_version']}, {workers} worker{'s' if workers > 1 else ''} "
            f"(5 epochs) | SGD | cpu | real pairs | C (Cython) | - | {workers} | - | "
            f"{_spread(p)} | {_ratio(p['centre_words_per_second'], floor)} | - | - | "
            f"vocabulary {p['vocab_seconds']:.1f} s | {rss} | - |")
    return "\n".join(lines)


def _rho(evaluation: dict[str, Any], name: str) -> str:
    score = evaluation.get(name)
    return "-" if not score else f"{score['spearman']:.3f} ({score['covered']}/{score['total']})"


def comparison_table(quality: list[dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    """Our backends' 5-epoch trainings beside gensim's, speed and vector quality together."""
    lines = ["| trainer | step | optimiser | device | epochs | centre words/s | training s | "
             "WordSim353 rho (pairs) | SimLex-999 rho (pairs) | all-epoch mean loss | date |",
             "|---" * 11 + "|"]
    for r in quality:
        loss = r["all_epochs_mean_loss"]
        check = "" if 0.40 <= loss <= 0.42 else " (outside 0.40-0.42)"
        lines.append(
            f"| w2v-multi {r['backend']} {r['framework_version']} | {r.get('step', 'fast')} | "
            f"Adam, batch "
            f"{r['batch_size']} | {r['device']} | {r['epochs']} | "
            f"{r['centre_words_per_second']:,.0f} | {r['train_seconds']:.1f} | "
            f"{_rho(r['evaluation'], 'wordsim353')} | {_rho(r['evaluation'], 'simlex999')} | "
            f"{loss:.3f}{check} | {r['date'][:10]} |")
    for r in peers:
        lines.append(
            f"| gensim {r['gensim_version']}, {r['workers']} worker"
            f"{'s' if r['workers'] > 1 else ''} | - | SGD, lr 0.025 decaying | cpu | "
            f"{r['epochs']} | "
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
    # Ties (every backend and step lands on the same vectors) go to the fastest.
    best = max(ours, key=lambda q: (q["evaluation"]["wordsim353"]["spearman"],
                                    q["centre_words_per_second"]))
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


def plot_throughput(rows: list[dict[str, Any]], floor: dict[str, Any] | None,
                    peers: list[dict[str, Any]]) -> Path | None:
    """throughput.png: per device, each backend's chapter and fast bars side by side (min-max
    over the rounds); the floor as a line, gensim's bars beside the CPU's."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.scaling import COLOURS
    from common.plotting import save_figure

    devices = sorted({r["device"] for r in rows})
    figure, axes = plt.subplots(1, len(devices), figsize=(7.5 * len(devices), 4), dpi=120,
                                squeeze=False)
    for axis, device in zip(axes[0], devices):
        chosen = [r for r in rows if r["device"] == device
                  and (r["batch_size"], r["embed_size"]) == (512, 100)]
        names = list(dict.fromkeys(r["backend"] for r in chosen))
        for offset, step in ((-0.2, "chapter"), (0.2, "fast")):
            for index, name in enumerate(names):
                for r in chosen:
                    if r["backend"] == name and r["step"] == step:
                        value = r["centre_words_per_second"]
                        axis.bar(index + offset, value, width=0.38, color=COLOURS.get(name),
                                 alpha=0.45 if step == "chapter" else 1.0,
                                 hatch="//" if step == "chapter" else None,
                                 yerr=[[value - r["centre_words_per_second_min"]],
                                       [r["centre_words_per_second_max"] - value]], capsize=3)
        ticks = [f"{name}\nchapter | fast" for name in names]
        if device == "cpu":
            for workers, p in sorted(gensim_five(peers).items()):
                ticks.append(f"gensim\n{workers} worker{'s' if workers > 1 else ''}")
                axis.bar(len(ticks) - 1, p["centre_words_per_second"], width=0.5,
                         color="lightgray", edgecolor="gray")
            if floor:
                axis.axhline(floor["centre_words_per_second"], color="black", linestyle="--",
                             linewidth=1, label=f"floor: the chapter's pipeline, "
                             f"{floor['centre_words_per_second']:,.0f}/s")
                axis.legend(fontsize=7)
        axis.set_xticks(range(len(ticks)), ticks)
        model = chosen[0].get("device_model", "?") if chosen else "?"
        axis.set_title(f"{device} ({model}): centre words/s, PTB, B=512, E=100; hatched: "
                       f"chapter step, solid: fast; median of {chosen[0].get('rounds', '?')} "
                       f"rounds (min-max); commit {chosen[0]['commit']}", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.grid(axis="y", alpha=0.3)
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


def summary_table() -> str:
    """The README's summary of the newest run: per backend, both steps' rates and their ratio
    to the floor; the floor and gensim last."""
    rows = throughput_rows()
    if not rows:
        return ""
    run = run_key(rows[0])
    floor, five = baseline_row(run), gensim_five(peer_rows(run))
    by_backend: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["device"] == "cpu":
            by_backend.setdefault(f"{r['backend']} {r['framework_version']}", {})[r["step"]] = r
    lines = ["| backend | chapter step, centre words/s | x floor | fast step, centre words/s | "
             "x floor | fast step's work |", "|---" * 6 + "|"]
    for label, steps in by_backend.items():
        chapter, fast = steps.get("chapter"), steps.get("fast")
        cells = []
        for r in (chapter, fast):
            cells += ([f"{r['centre_words_per_second']:,.0f}",
                       _ratio(r["centre_words_per_second"], floor)] if r else ["-", "-"])
        work = (f"{fast['slots']}, {fast['steps_per_call']} step(s)/call, native: "
                f"{fast['native_code']}" if fast else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {work} |")
    if floor:
        lines.append(f"| the chapter's own pipeline (the floor) | "
                     f"{floor['centre_words_per_second']:,.0f} | 1.0x | - | - | plain-Python "
                     f"data build {floor['data_build_seconds']:.1f} s |")
    for workers, p in sorted(five.items()):
        lines.append(f"| gensim {p['gensim_version']}, {workers} worker"
                     f"{'s' if workers > 1 else ''} | - | - | "
                     f"{p['centre_words_per_second']:,.0f} | "
                     f"{_ratio(p['centre_words_per_second'], floor)} | C, SGD |")
    return (f"Run `{run}` (commit `{rows[0]['commit']}`, {rows[0]['date'][:10]}, "
            f"{rows[0].get('cpu', '?')}, {rows[0]['threads']} threads; median of "
            f"{rows[0].get('rounds', '?')} interleaved rounds):\n\n" + "\n".join(lines))


def run_header(rows: list[dict[str, Any]]) -> str:
    """Which run and commit every table of latest.md comes from, and how it was measured."""
    first = rows[0]
    dirty = (" The tree had uncommitted changes (`--allow-dirty`): these rows are marked "
             "dirty." if first["commit"].endswith("+dirty") else "")
    return (f"Run `{run_key(first)}`: commit `{first['commit']}`, {first['date'][:10]}, "
            f"{first.get('cpu', '?')}, {first['threads']} threads, Python "
            f"{first.get('python', '?')}; every table below comes from this one run, its "
            f"measurements interleaved round by round ({first.get('rounds', '?')} rounds).{dirty}")


def render_all() -> list[Path]:
    """latest.md, throughput.png, scaling_*.png; pipeline_scaling.{png,md} and
    corpus_scale.{png,md} (`make bench-corpus`, their own runs) are rendered apart."""
    from common.io import write_text

    rows = throughput_rows()
    run = run_key(rows[0]) if rows else None
    floor, quality, peers = baseline_row(run), quality_rows(run), peer_rows(run)
    written = [p for p in [plot_throughput(rows, floor, peers)] if p]
    written += scaling.render()
    written += pipeline_scaling.render()
    written += corpus_scale.render()
    sections = [
        ("", run_header(rows) if rows else ""),
        ("", "Unit: **centre words per second** (the chapter's \"tokens\"): real (unpadded) "
             "examples trained per second of a timed epoch, warm-up timed apart. Two tiers: "
             "`chapter` is the same padded work in every framework, through its own autodiff "
             "and stock optimiser, one step per compiled call; `fast` is anything goes. "
             "**x floor** is the rate over the chapter's own PyTorch pipeline (plain-Python "
             "data, DataLoader, eager autograd, `torch.optim.Adam`; "
             "`benchmarks/chapter_baseline.py`) measured in the same rounds; gensim's rate is "
             "its own count of effective words per second of `train()`."),
        ("", devices_note()),
        ("Throughput (PTB, B=512, E=100, dense Adam; the work of each row disclosed)",
         throughput_table(rows, floor, peers) if rows else ""),
        ("Speed and vector quality after the chapter's 5 epochs (`w2v train`), beside gensim",
         "\n\n".join(part for part in (comparison_table(quality, peers) if quality or peers
                                         else "", verdict(quality, peers)) if part)),
        ("Scaling (thousands of centre words/s, median over the rounds; B batch size, E "
         "embedding size; plots `scaling_batch.png`, `scaling_embed.png`)", scaling.table()),
    ]
    text = "# Benchmarks (rendered from the JSON lines by `python -m benchmarks.run --render`)\n"
    for heading, body in sections:
        if body:
            text += (f"\n## {heading}\n" if heading else "") + f"\n{body}\n"
    text += ("\nCorpora past PTB and the data pipeline's scaling are measured by "
             "`make bench-corpus`, apart: `corpus_scale.md`, `pipeline_scaling.md`.\n")
    written.append(write_text(RESULTS / "latest.md", text))
    return written


def fill(path: Path, marker: str, body: str) -> bool:
    """Replace what sits between `<!-- bench:MARKER -->` and `<!-- /bench:MARKER -->` in
    `path` with `body` (written atomically); False when the markers are missing."""
    from common.io import write_text

    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{marker} -->", f"<!-- /bench:{marker} -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    write_text(path, f"{head}{start}\n{body.strip()}\n{end}{tail}")
    return True


def update_readmes() -> list[Path]:
    """The README's summary and benchmarks/README.md's tables, from the newest run."""
    root = RESULTS.parent.parent
    latest = (RESULTS / "latest.md").read_text(encoding="utf-8").split("\n", 1)[1]
    latest = latest.replace("\n## ", "\n### ").replace("](", "](results/")
    done = [path for path, marker, body in (
        (root / "README.md", "summary", summary_table()),
        (root / "benchmarks" / "README.md", "latest", latest)) if fill(path, marker, body)]
    return done


if __name__ == "__main__":
    if sys.argv[1:] == ["--summary"]:  # the README's table
        print(summary_table())
        sys.exit(0)
    if sys.argv[1:] == ["--readmes"]:  # rewrite both READMEs' tables from the newest run
        for path in update_readmes():
            print(f"wrote {path}")
        sys.exit(0)
    for path in render_all():
        print(f"wrote {path}")
    sys.exit(0)
