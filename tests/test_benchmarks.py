"""Benchmarks: the gensim peer's figures, generated corpora, tables, the GPU path, the lock.

Speed is never asserted; these check that the figures mean what the tables say they mean.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _sentences(count: int = 400) -> list[list[str]]:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    return [[words[min(int(k), 59)] for k in rng.zipf(1.5, size=int(rng.integers(3, 15)))]
            for _ in range(count)]


def test_gensim_peer_times_training_apart_and_counts_effective_words():
    pytest.importorskip("gensim")
    from benchmarks.peer import CHAPTER, train_gensim

    started = time.perf_counter()
    result = train_gensim(_sentences(), workers=1, epochs=2, min_count=1, vector_size=8)
    wall = time.perf_counter() - started
    assert result.params["sg"] == CHAPTER["sg"] == 1 and result.params["negative"] == 5
    assert result.params["vector_size"] == 8 and result.params["epochs"] == 2
    raw = sum(map(len, _sentences())) * 2
    assert result.raw_words == raw
    # Subsampling (t = 1e-4 on a tiny corpus) keeps only a part of the words.
    assert 0 < result.effective_words < raw
    assert result.train_seconds > 0 and result.vocab_seconds > 0
    # Training alone is timed: the vocabulary pass is outside the rate, so the rate beats
    # what the whole call's wall time would give, and both parts fit inside that wall time.
    assert result.train_seconds + result.vocab_seconds <= wall
    assert result.words_per_second > result.effective_words / wall
    assert result.keyed.vector_size == 8 and "w1" in result.keyed
    record = json.loads(json.dumps(result.record()))
    assert record["centre_words_per_second"] == pytest.approx(result.words_per_second)
    assert {"cpu", "threads", "date", "commit", "gensim_version"} <= record.keys()


def test_zipf_corpus_is_exact_in_size_and_seeded():
    from benchmarks.pipeline_scaling import TYPES, encoded_corpus, parse_size, zipf_corpus

    ids, offsets = zipf_corpus(50_000, seed=3)
    again, _ = zipf_corpus(50_000, seed=3)
    assert len(ids) == offsets[-1] == 50_000 and offsets[0] == 0
    assert np.array_equal(ids, again) and (np.diff(offsets) >= 1).all()
    assert ids.min() >= 0 and ids.max() < TYPES
    frequency = np.bincount(ids)
    assert frequency[0] > frequency[1] > frequency[10] > frequency[100]  # Zipf: rank 0 first
    corpus, counts = encoded_corpus(50_000, seed=3)
    assert counts.sum() == 50_000 and np.array_equal(np.bincount(corpus.tokens), counts)
    assert (np.diff(counts[1:]) <= 0).all() and counts[-1] >= 10  # by count, min_freq 10
    assert parse_size("1M") == 10**6 and parse_size("500k") == 500_000
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")


def test_the_shared_zipf_generator_writes_the_corpus_it_draws(tmp_path):
    from benchmarks import zipf

    ids, offsets = zipf.zipf_corpus(25_500, types=300, exponent=1.0, line_length=1000, seed=4)
    assert np.diff(offsets).tolist() == [1000] * 25 + [500]
    path = zipf.write_text(tmp_path / "zipf.txt", 25_500, types=300, exponent=1.0,
                           line_length=1000, seed=4)
    lines = path.read_text().splitlines()
    assert [len(line.split()) for line in lines] == np.diff(offsets).tolist()
    assert " ".join(lines).split() == [zipf.word(int(rank)) for rank in ids]


def test_corpus_scale_states_each_target_with_its_figure():
    from benchmarks.corpus_scale import targets

    rows = {("torch", 17 * 10**6): {"peak_rss_mib": 1200.0, "peak_anon_mib": 1000.0},
            ("torch", 10**8): {"peak_rss_mib": 1900.0, "peak_anon_mib": 1600.0},
            ("data", 17 * 10**6): {"build_seconds": 25.0}}
    lines = targets(rows)
    assert lines[0].endswith("adam: 1,200 MiB (target <= 1,536 MiB: met)")
    assert "= 1.60 (target <= 1.5: NOT met)" in lines[1]
    assert lines[2] == "data build at 17M tokens: 25.0 s (target <= 20 s: NOT met)"


def test_scaling_points_share_the_chapters_point_once():
    from benchmarks.scaling import points

    chosen = points((128, 512, 4096), (50, 100, 300))
    assert chosen == [(128, 100), (512, 100), (4096, 100), (512, 50), (512, 300)]


def _quality(backend: str, rate: float, rho: float) -> dict:
    return {"backend": backend, "framework_version": "1", "device": "cpu", "epochs": 5,
            "batch_size": 512, "centre_words_per_second": rate, "train_seconds": 1.7e6 / rate,
            "all_epochs_mean_loss": 0.41, "date": "2026-01-01",
            "evaluation": {"wordsim353": {"spearman": rho, "covered": 217, "total": 353}}}


def _peer(workers: int, rate: float, rho: float) -> dict:
    return {"gensim_version": "4.4.0", "workers": workers, "epochs": 5,
            "centre_words_per_second": rate, "train_seconds": 2e6 / rate, "date": "2026-01-01",
            "evaluation": {"wordsim353": {"spearman": rho, "covered": 217, "total": 353}}}


def test_the_comparison_says_plainly_who_is_faster_and_who_is_better():
    from benchmarks.report import comparison_table, verdict

    quality = [_quality("torch", 125_000, 0.22), _quality("numpy", 50_000, 0.21)]
    peers = [_peer(1, 290_000, 0.14), _peer(2, 310_000, 0.13)]
    sentence = verdict(quality, peers)
    assert "gensim (2 workers) is 2.5x faster than the fastest backend here (torch)" in sentence
    assert "w2v-multi's vectors are better" in sentence and "rho 0.220 for torch" in sentence
    swapped = verdict([_quality("torch", 400_000, 0.1)], peers)
    assert "(torch) is 1.3x faster than gensim" in swapped
    assert "gensim's vectors are better" in swapped
    assert "Per second of training" not in sentence  # no longer gensim run to compare with
    longer = {**_peer(1, 290_000, 0.25), "epochs": 20, "train_seconds": 14.0}
    assert ("given 14.0 s (20 epochs, 1 worker), gensim reaches rho 0.250, above torch's 0.220 "
            "in 13.6 s: gensim gives the better vectors per second") in verdict(quality,
                                                                                 peers + [longer])
    table = comparison_table(quality, peers).splitlines()
    assert len(table) == 2 + 4 and "0.220 (217/353)" in table[2] and "310,000" in table[5]


def _run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def test_asking_for_a_gpu_the_machine_lacks_is_one_line_and_exit_2():
    import backends

    if any(d != "cpu" for d in backends.load("numpy").devices()):
        pytest.skip("this machine has a GPU")
    done = _run("benchmarks.throughput", "--backend", "numpy", "--device", "gpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("throughput: error: device 'gpu' is not available here: "
                                   "the numpy backend runs on the CPU only; this machine "
                                   "offers: cpu")


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs util-linux flock")
def test_the_benchmark_lock_is_not_taken_twice_under_flock(tmp_path):
    lock = tmp_path / "cpu.lock"
    code = "from benchmarks.machine import cpu_lock\nwith cpu_lock(): print('inside')"
    done = subprocess.run(["flock", str(lock), sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "W2V_BENCH_LOCK": str(lock)})
    assert done.returncode == 0 and done.stdout.strip() == "inside"


def test_quality_summary_counts_the_seeds_that_reach_the_bar_within_the_budget():
    from benchmarks.quality import best_within_budget, summarise

    def row(label: str, curve: list[tuple[float, float]]) -> dict:
        return {"label": label, "curve": [[epoch, seconds, rho, None]
                                          for epoch, (seconds, rho) in enumerate(curve, 1)]}

    rows = [row("best", [(5.0, 0.30), (14.9, 0.395), (16.0, 0.41)]),  # 0.41 is too late
            row("best", [(6.0, 0.35), (12.0, 0.33)]),
            row("chapter", [(16.0, 0.25)])]                             # nothing in budget
    assert [best_within_budget(r) for r in rows[:2]] == [0.395, 0.35]
    lines = summarise(rows).splitlines()
    assert lines[0].startswith("best") and "mean 0.372 (min 0.350, max 0.395)" in lines[0]
    assert lines[0].endswith("1 of 2 reach 0.39")
    assert "mean nan" in lines[1] and lines[1].endswith("0 of 1 reach 0.39")


def test_the_variants_table_puts_each_optimiser_beside_gensims_seed_means():
    from benchmarks.variants_gensim import parse_combination, select, table
    from common.errors import ConfigError

    assert parse_combination("cbow-hsoftmax") == ("cbow", "hsoftmax", "adam", None)
    assert parse_combination("cbow-negative:sgd:0.3") == ("cbow", "negative", "sgd", 0.3)
    with pytest.raises(ConfigError, match="is not MODEL-LOSS"):
        parse_combination("cbow-negative:sparse_adam")

    def row(who: str, seed: int, score: float, **extra: object) -> dict:
        return {"who": who, "model": "cbow", "loss": "negative", "epochs": 5, "seed": seed,
                "wordsim353": score, "simlex999": 0.1, "analogies": 0.01, "seconds": 10.0,
                **extra}

    rows = [row("w2v torch", 0, 0.2), row("w2v torch", 1, 0.3),  # adam: no optimizer key
            row("w2v torch", 0, 0.1, optimizer="sgd", lr=1.0),
            row("gensim 4.4.0", 0, 0.05), row("gensim 4.4.0", 1, 0.15),
            row("gensim 4.4.0", 2, 0.9)]  # a seed not asked for
    chosen = select(rows, [5], [0, 1], [parse_combination("cbow-negative")])
    assert len(chosen) == 4  # ours with adam, gensim's of both seeds
    lines = table(chosen)
    assert len(lines) == 3
    assert lines[2].startswith("| 5 | cbow | negative | adam | 2 | 0.250 | 0.100 |")
    both = table(select(rows, [5], [0, 1], [parse_combination("cbow-negative"),
                                             parse_combination("cbow-negative:sgd:1.0")]))
    assert [line.split(" | ")[3] for line in both[2:]] == ["adam", "sgd 1"]
    # CPU seconds: the mean of the rows that have them ("-" for rows measured before them)
    timed = table([row("w2v torch", 0, 0.2, cpu_seconds=12.0), row("w2v torch", 1, 0.2),
                   row("gensim 4.4.0", 0, 0.05)])
    assert timed[2].endswith("| 10.0 | 10.0 | 12.0 | - |")


def test_the_variants_benchmark_refuses_more_jobs_than_cpus(capsys):
    from benchmarks.variants_gensim import main

    with pytest.raises(SystemExit) as stopped:
        main(["--jobs", "4096", "--who", "w2v"])
    assert stopped.value.code == 2
    assert "--jobs must be 1 to" in capsys.readouterr().err
