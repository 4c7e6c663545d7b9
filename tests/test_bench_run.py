"""`make bench`'s fairness: the work each row discloses, one commit per run, the chapter's own
pipeline as the floor, `--threads`, the device check's CPU half.

Speed is never asserted; these check what the rows say and that the driver refuses what it
must.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import PADDED, PAIRS
from helpers import VOCAB, error_line, make_batch, require_backend, tiny_corpus

ROOT = Path(__file__).resolve().parent.parent

# What each step computes and how it runs: (slots, own native code?, steps per compiled call).
WORK = {("numpy", "chapter"): (PADDED, False, 1), ("numpy", "fast"): (PADDED, False, 1),
        ("torch", "chapter"): (PADDED, False, 1), ("torch", "fast"): (PAIRS, False, 1),
        ("jax", "chapter"): (PADDED, False, 1), ("jax", "fast"): (PADDED, False, 1),
        ("tf", "chapter"): (PADDED, False, 1), ("tf", "fast"): (PADDED, False, 8),
        ("mxnet", "chapter"): (PADDED, False, 1), ("mxnet", "fast"): (PAIRS, True, 1)}


def test_every_step_discloses_its_work_and_counts_its_slots(backend_name, step):
    backend = backends.load(backend_name)(VOCAB, 4, step=step)
    work = backend.work()
    slots, native, per_call = WORK[backend_name, step]
    assert (work.slots, work.steps_per_call) == (slots, per_call)
    if native and os.environ.get("W2V_MXNET_KERNEL", "auto") != "builtin":
        assert work.native_code.startswith("C++ -march=native")
    else:
        assert work.native_code == "none" or (backend_name, step) == ("mxnet", "fast")
    assert work.compiled  # says how the step runs
    batch = make_batch(np.random.default_rng(0), batch_size=12)
    real = int(np.count_nonzero(batch.masks))
    assert 0 < real < batch.masks.size  # the batch has padding, so the two counts differ
    expected = batch.masks.size if slots == PADDED else real
    assert backend.slots_computed(batch) == expected


@pytest.mark.parametrize("optimizer", ["sparse_adam", "sgd"])
def test_a_sparse_optimisers_disclosure_names_it_not_dense_adam(backend_name, step, optimizer):
    backend = backends.load(backend_name)(VOCAB, 4, step=step, optimizer=optimizer)
    work = backend.work()
    named = {"sparse_adam": ("sparse_adam", "SparseAdam"), "sgd": ("sgd", "SGD")}[optimizer]
    assert any(name in work.compiled for name in named), work.compiled
    if optimizer == "sgd":
        assert "Adam" not in work.compiled, work.compiled
    assert work.native_code == "none"  # the native operators serve dense Adam only
    batch = make_batch(np.random.default_rng(0), batch_size=12)
    assert backend.slots_computed(batch) in (batch.masks.size, int(np.count_nonzero(batch.masks)))


def test_the_chapter_step_is_the_same_padded_work_one_step_per_call_everywhere(backend_name):
    work = backends.load(backend_name)(VOCAB, 4, step="chapter").work()
    assert (work.slots, work.native_code, work.steps_per_call) == (PADDED, "none", 1)


def test_a_throughput_row_carries_the_disclosure(tmp_path):
    from benchmarks.throughput import measure

    # The chapter's subsampling leaves about 32 centre words of the tiny corpus.
    row = measure("numpy", "cpu", data_path=None, repeats=2, warmup_steps=1, batch_size=8,
                  embed_size=8, optimizer="adam", step="fast", timed_words=16,
                  corpus=str(tiny_corpus(tmp_path)))
    for key in ("slots", "slots_per_step", "native_code", "steps_per_call", "compiled",
                "threads", "ms_per_step", "ms_per_step_min", "ms_per_step_max",
                "centre_words_per_second_min", "centre_words_per_second_max",
                "warmup_seconds", "peak_rss_mib", "commit", "run"):
        assert key in row, key
    assert row["slots"] == PADDED and row["native_code"] == "none"
    # numpy pads each batch to its widest row: 8 rows of at most 2 * 5 * (1 + 5) slots.
    assert row["steps"] == 2 if "steps" in row else True
    assert 8 * 6 <= row["slots_per_step"] <= 8 * 60
    assert row["ms_per_step_min"] <= row["ms_per_step"] <= row["ms_per_step_max"]


# -- one commit per run ------------------------------------------------------------------------
def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["init", "-q"], ["config", "user.email", "t@example.com"],
                    ["config", "user.name", "t"]):
        subprocess.run(["git", *command], cwd=repo, check=True, timeout=30)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "code.py"], cwd=repo, check=True, timeout=30)
    subprocess.run(["git", "commit", "-qm", "one"], cwd=repo, check=True, timeout=30)
    return repo


def test_a_dirty_tree_is_refused_unless_allowed_and_then_marked(tmp_path, monkeypatch, capsys):
    from benchmarks import run

    repo = _repo(tmp_path)
    monkeypatch.setattr(run, "ROOT", repo)
    head = run.tree_commit(False)
    assert len(head) >= 7 and "+" not in head
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(run.DirtyTree, match=r"uncommitted changes \(code.py\).*--allow-dirty"):
        run.tree_commit(False)
    assert run.tree_commit(True) == head + "+dirty"
    # The command: one line, exit 2, nothing measured.
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    assert run.main(["--data", str(tmp_path / "none.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmarks.run: error: the working tree has")
    assert not (tmp_path / "results" / "throughput.jsonl").exists()


def _row(run: str, backend: str, step: str, rate: float, **extra) -> dict:
    return {"run": run, "commit": run.split("-")[0], "backend": backend, "step": step,
            "framework_version": "1", "optimizer": "adam", "device": "cpu", "batch_size": 512,
            "embed_size": 100, "centre_words_per_second": rate,
            "centre_words_per_second_min": rate, "centre_words_per_second_max": rate,
            "ms_per_step": 1e3 / rate, "warmup_seconds": 1.0, "peak_rss_mib": 100.0,
            "slots": PADDED, "slots_per_step": 30720.0, "native_code": "none",
            "steps_per_call": 1, "threads": 2, "loss_after_timed_epoch": 0.5, **extra}


def test_tables_hold_the_newest_run_alone_merged_over_its_rounds():
    from benchmarks.report import across_rounds, of_newest_run, throughput_table

    rows = [_row("old-a", "torch", "fast", 999_999.0),
            _row("new-b", "torch", "fast", 100_000.0, round=1),
            _row("new-b", "torch", "chapter", 40_000.0, round=1),
            _row("new-b", "torch", "fast", 120_000.0, round=2),
            _row("new-b", "torch", "chapter", 20_000.0, round=2),
            _row("new-b", "torch", "fast", 90_000.0, round=3)]
    newest = of_newest_run(rows)
    assert len(newest) == 5 and {r["commit"] for r in newest} == {"new"}
    merged = {r["step"]: r for r in across_rounds(newest, ("backend", "step"))}
    fast = merged["fast"]
    assert fast["centre_words_per_second"] == 100_000.0  # the median of the three rounds
    assert (fast["centre_words_per_second_min"], fast["centre_words_per_second_max"]) == \
        (90_000.0, 120_000.0)
    assert fast["rounds"] == 3 and merged["chapter"]["centre_words_per_second"] == 30_000.0
    floor = {"centre_words_per_second": 10_000.0, "centre_words_per_second_min": 9_000.0,
             "centre_words_per_second_max": 11_000.0, "framework_version": "2",
             "threads": 2, "data_build_seconds": 30.0, "peak_rss_mib": 600.0, "loss": 0.48}
    peers = [{"gensim_version": "4", "workers": w, "epochs": 5, "vocab_seconds": 0.1,
              "centre_words_per_second": rate, "centre_words_per_second_min": rate,
              "centre_words_per_second_max": rate} for w, rate in ((1, 300_000.0),
                                                                   (2, 500_000.0))]
    table = throughput_table([merged["chapter"], fast], floor, peers).splitlines()
    assert len(table) == 2 + 2 + 1 + 2
    assert "| **3.0x** | 0.10x | 0.06x |" in table[2] and "| **10.0x** | 0.33x | 0.20x |" in \
        table[3]
    assert table[4].startswith("| chapter baseline") and "data build 30.0 s" in table[4]
    assert "999,999" not in "\n".join(table)


# -- the chapter's own pipeline, the floor ------------------------------------------------------
def _words(count: int = 300) -> list[list[str]]:
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(40)] + ["<unk>"]
    return [[vocab[min(int(k) - 1, 40)] for k in rng.zipf(1.3, size=int(rng.integers(1, 12)))]
            for _ in range(count)]


def test_the_baseline_builds_the_chapters_data():
    from benchmarks import chapter_baseline as base

    sentences = _words()
    dataset, vocab = base.build_data(sentences, seed=3, max_window=2, num_noise=4)
    again, _ = base.build_data(sentences, seed=3, max_window=2, num_noise=4)
    assert again.centers == dataset.centers and again.negatives == dataset.negatives  # seeded
    assert vocab.idx_to_token[0] == "<unk>" and "<unk>" not in vocab.idx_to_token[1:]
    counts = collections.Counter(w for line in sentences for w in line)
    kept = [w for w in vocab.idx_to_token[1:]]
    assert all(counts[w] >= base.MIN_FREQ for w in kept)
    assert len(dataset) == len(dataset.contexts) == len(dataset.negatives) > 0
    for center, contexts, negatives in (dataset[i] for i in range(len(dataset))):
        assert 0 < center < len(vocab)
        assert 1 <= len(contexts) <= 2 * 2 and 0 not in contexts
        assert len(negatives) == 4 * len(contexts)
        assert not set(negatives) & set(contexts) and min(negatives) >= 1
    # Noise words follow count^0.75: the most frequent word is drawn more than a rare one.
    drawn = collections.Counter(n for negatives in dataset.negatives for n in negatives)
    assert drawn[1] > drawn[len(vocab) - 1]


def test_the_baselines_generator_caches_ten_thousand_draws():
    from benchmarks import chapter_baseline as base

    generator = base.RandomGenerator([2, 3, 4])
    draws = [generator.draw() for _ in range(10)]
    assert set(draws) <= {1, 2, 3} and len(generator.candidates) == base.CACHE == 10_000
    assert generator.i == 10


def test_the_baselines_batches_are_the_chapters():
    pytest.importorskip("torch")
    from benchmarks import chapter_baseline as base

    data = [(1, [2, 2], [3, 4, 5, 6]), (7, [8], [9, 10])]
    centers, contexts_negatives, masks, labels = base.batchify(data)
    assert tuple(centers.shape) == (2, 1) and tuple(contexts_negatives.shape) == (2, 6)
    assert contexts_negatives.tolist() == [[2, 2, 3, 4, 5, 6], [8, 9, 10, 0, 0, 0]]
    assert masks.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert labels.tolist() == [[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    dataset, vocab = base.build_data(_words(), seed=0)
    epochs = base.train(dataset, len(vocab), epochs=2, embed_size=8)
    assert [e["words"] for e in epochs] == [len(dataset)] * 2
    assert epochs[1]["loss"] < epochs[0]["loss"] < np.log(2) + 0.05  # it learns


# -- --threads ---------------------------------------------------------------------------------
def test_bad_threads_are_a_one_line_error(capsys, tmp_path):
    from common.cli import main

    for bad in ("-1", "two"):
        assert main(["train", "--backend", "numpy", "--threads", bad, "--corpus",
                     str(tiny_corpus(tmp_path)), "--out", str(tmp_path / "run")]) == 2
        assert "--threads" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_threads_are_applied_and_recorded(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "train", "--backend", "numpy", "--threads", "1",
         "--corpus", str(tiny_corpus(tmp_path)), "--min-freq", "1", "--epochs", "1",
         "--subsample-t", "1", "--batch-size", "64", "--embed-size", "8", "--out", str(run),
         "--no-progress"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["threads"] == 1
    assert "threads: 1" in done.stdout


@pytest.mark.parametrize("name,query", [
    ("torch", "import torch; print(torch.get_num_threads())"),
    ("tf", "import tensorflow as tf; print(tf.config.threading.get_intra_op_parallelism_threads(),"
           " tf.config.threading.get_inter_op_parallelism_threads())"),
    ("mxnet", "import os; print(os.environ['OMP_NUM_THREADS'])"),
    ("jax", "import jax, os; jax.devices(); print(len(os.sched_getaffinity(0)))")])
def test_each_framework_sets_its_own_pools(name, query):
    require_backend(name)
    code = (f"import backends; cls = backends.load({name!r}); print(cls.set_threads(1)); "
            f"{query}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    how, figures = done.stdout.strip().splitlines()[-2:]
    assert figures.split() == ["1"] * len(figures.split())
    assert "1" in how


# -- the device check's CPU half ---------------------------------------------------------------
def test_the_device_check_runs_what_it_has_and_says_why_not_the_rest(tmp_path):
    absent = [name for name in backends.names() if backends.missing(name)]
    names = ["numpy", *absent[:1]]
    env = {k: v for k, v in os.environ.items() if k != "W2V_PTB"}  # no PTB: a Zipf corpus
    done = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--device", "cpu", "--out", str(tmp_path / "out"),
         "--timed-words", "2000", "--no-tests", "--backends", *names],
        capture_output=True, text=True, cwd=ROOT, timeout=400,
        env={**env, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"] == []
    assert summary["ran"][0] == "numpy parity on cpu (both steps): passed"
    assert [line.split(" throughput")[0] for line in summary["ran"][1:]] == \
        ["numpy chapter", "numpy fast"]
    if absent:
        assert summary["could_not_run"][0].startswith(f"{absent[0]}: backend '{absent[0]}' needs")
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "throughput.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ["chapter", "fast"]
    assert all(r["corpus"] != "ptb" and r["device"] == "cpu" for r in rows)
    parity = [json.loads(line) for line in
              (tmp_path / "out" / "parity.jsonl").read_text().splitlines()]
    assert [(p["step"], p["passed"]) for p in parity] == [("chapter", True), ("fast", True)]
    assert parity[0]["max_table_difference"] == 0.0  # the oracle against itself
    environment = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert environment["backends"]["numpy"]["devices"] == ["cpu"]


def test_the_device_checks_replicas_compare_one_with_all_devices(tmp_path):
    """The GPU check's replicas step, run here on two CPU host devices (jax): one epoch with
    1 and with 2 replicas, the same loss, both rates recorded."""
    from benchmarks.device_check import gpu_count, replicas
    from helpers import require_backend, tiny_corpus

    assert gpu_count(["cpu", "gpu:0", "gpu:1"]) == 2 and gpu_count(["cpu"]) == 0
    require_backend("jax")
    tiny = ["--corpus", str(tiny_corpus(tmp_path)), "--batch-size", "8"]
    record = replicas("jax", "cpu", 2, tiny, tmp_path, 240)
    assert record["passed"] and record["relative_difference"] <= 1e-4
    assert record["loss_1"] == pytest.approx(record["loss_2"], rel=1e-4)
    assert record["centre_words_per_second_1"] > 0 and record["centre_words_per_second_2"] > 0
    with pytest.raises(RuntimeError, match="--data-parallel 1: "):
        replicas("jax", "cpu", 2, ["--corpus", str(tmp_path / "missing.txt")], tmp_path, 240)
