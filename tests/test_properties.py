"""Property-based tests: whatever flags and corpora a user tries, the answer is a finished run
or one line of error, never a traceback; and every batch the pipeline can make is consistent.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common import runs
from common.stream import EpochData
from common.cli import main
from common.config import SAMPLING_MODES
from common.errors import DataError
from common.vocab import EncodedCorpus

WORDS = ["chip", "intel", "bank", "money", "vote", "party", "the", "a", "of", "ünïcode", "<unk>"]

# Each flag: values a user might mean, and values that must be refused (drawn 1 time in 4).
bad_numbers = st.sampled_from(["0", "-1", "1e3", "x", "", "2.5", "nan", "inf", "-0", "abc"])
FLAGS = {
    "--epochs": (st.integers(1, 2), bad_numbers),
    "--lr": (st.floats(1e-4, 0.5), bad_numbers),
    "--batch-size": (st.sampled_from([1, 7, 64, 100000]), bad_numbers),
    "--embed-size": (st.integers(1, 24), bad_numbers),
    "--max-window-size": (st.integers(1, 12), bad_numbers),
    "--num-noise-words": (st.integers(1, 12), bad_numbers),
    "--min-freq": (st.sampled_from([1, 2, 5, 1000]), bad_numbers),
    "--subsample-t": (st.floats(1e-6, 10), bad_numbers),
    "--sampling": (st.sampled_from(SAMPLING_MODES), st.just("sometimes")),
    "--optimizer": (st.sampled_from(["adam", "sparse_adam"]), st.just("sgd")),
    "--seed": (st.integers(0, 2**31), bad_numbers),
    "--device": (st.just("cpu"), st.sampled_from(["gpu", "gpu:7", "tpu", "cpu:x"])),
    "--backend": (st.sampled_from(["numpy", "np", "reference"]), st.just("theano")),
}

sentences = st.lists(st.lists(st.sampled_from(WORDS), min_size=0, max_size=25), max_size=60)


@st.composite
def train_commands(draw: st.DrawFn) -> tuple[list[str], list[list[str]] | None]:
    chosen = draw(st.lists(st.sampled_from(sorted(FLAGS)), unique=True, max_size=5))
    argv = ["--backend", "numpy", "--epochs", "1", "--embed-size", "8", "--batch-size", "16",
            "--subsample-t", "1", "--min-freq", "2"]  # small corpora: keep words; drawn flags win
    for flag in chosen:
        good, bad = FLAGS[flag]
        argv += [flag, str(draw(bad if draw(st.integers(0, 3)) == 0 else good))]
    missing = draw(st.integers(0, 5)) == 0  # now and then a corpus file that does not exist
    corpus = None if missing else draw(sentences)
    return argv, corpus


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=train_commands())
def test_any_flags_and_corpus_give_a_run_or_one_line(command, capsys):
    argv, corpus = command
    with tempfile.TemporaryDirectory() as folder:
        corpus_path = Path(folder) / "corpus.txt"
        if corpus is not None:
            corpus_path.write_text("\n".join(" ".join(s) for s in corpus), encoding="utf-8")
        out = Path(folder) / "run"
        capsys.readouterr()
        code = main(["train", "--corpus", str(corpus_path), "--out", str(out), "--no-progress",
                     "--query", "chip", *argv])
        captured = capsys.readouterr()
        event("trained" if code == 0 else f"refused: {captured.err[12:60]}")
        if code == 0:
            for name in (runs.CONFIG, runs.VOCAB, runs.CHECKPOINT, runs.VECTORS, runs.REPORT):
                assert (out / name).is_file(), name
            assert not [p for p in out.iterdir() if p.name.startswith(".")]
        else:
            lines = captured.err.strip().splitlines()
            assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("w2v: error: "), \
                captured.err
            if out.is_dir():  # whatever was written is whole: no temporaries
                assert not [p for p in out.iterdir() if p.name.startswith(".")]


@st.composite
def pipelines(draw: st.DrawFn) -> dict:
    vocab_size = draw(st.integers(2, 40))
    lengths = draw(st.lists(st.integers(0, 30), min_size=1, max_size=40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tokens = rng.integers(0, vocab_size, size=sum(lengths)).astype(np.int32)
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.int64) + \
        rng.integers(0, 3, size=vocab_size)
    counts[counts == 0] = 1
    return dict(
        corpus=EncodedCorpus(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
        counts=counts, max_window_size=draw(st.integers(1, 6)),
        num_noise_words=draw(st.integers(1, 6)), t=draw(st.sampled_from([1e-4, 1e-2, 1.0])),
        batch_size=draw(st.integers(1, 70)), mode=draw(st.sampled_from(SAMPLING_MODES)),
        fixed=draw(st.booleans()), seed=draw(st.integers(0, 1000)))


@settings(max_examples=150, deadline=None)
@given(spec=pipelines())
def test_every_batch_keeps_masks_labels_and_padding_consistent(spec):
    fixed = spec.pop("fixed")
    seed = spec.pop("seed")
    width = 2 * spec["max_window_size"] * (1 + spec["num_noise_words"])
    options = {"fixed_length": width, "pad_last_batch": True} if fixed else {}
    try:
        epochs = EpochData(spec["corpus"], spec["counts"],
                           max_window_size=spec["max_window_size"],
                           num_noise_words=spec["num_noise_words"], t=spec["t"],
                           batch_size=spec["batch_size"], seed=seed,
                           mode=spec["mode"], **options)
        data = {epoch: list(epochs.batches(epoch)) for epoch in (0, 1)}
    except DataError as error:  # the legitimate refusals: nothing to train on, no noise
        assert "yields no centre/context pair" in str(error) or \
            "cannot draw noise words" in str(error)
        return
    for epoch, batches in data.items():
        assert len(batches) == epochs.num_batches(epoch)
        real_rows = 0
        for batch in batches:
            rows, slots = batch.contexts_negatives.shape
            assert batch.centers.shape == (rows, 1)
            assert batch.masks.shape == batch.labels.shape == (rows, slots)
            assert rows <= spec["batch_size"] and (not fixed or rows == spec["batch_size"])
            assert not fixed or slots == width
            masks, labels = batch.masks.astype(bool), batch.labels.astype(bool)
            # real slots come first, contexts first among them; padding is index 0
            assert (np.diff(masks.astype(int), axis=1) <= 0).all()
            assert (np.diff(labels.astype(int), axis=1) <= 0).all()
            assert not (labels & ~masks).any()
            assert (batch.contexts_negatives[~masks] == 0).all()
            real = masks[:, 0]
            real_rows += int(real.sum())
            assert (labels[real, 0]).all() and not masks[~real].any()
            contexts = labels.sum(1)
            noise = masks.sum(1) - contexts
            assert (noise[real] == contexts[real] * spec["num_noise_words"]).all()
            assert (contexts <= 2 * spec["max_window_size"]).all()
            for row in np.flatnonzero(real):
                row_contexts = set(batch.contexts_negatives[row, labels[row]].tolist())
                row_noise = batch.contexts_negatives[row, masks[row] & ~labels[row]]
                assert not row_contexts.intersection(row_noise.tolist())
        assert real_rows == epochs.num_examples(epoch)
    if spec["mode"] == "static":  # sampled once: the same examples each epoch
        assert epochs.num_examples(0) == epochs.num_examples(1)


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "two"], ["train", "--sampling"], ["similar"], ["bogus"], [],
    ["train", "--resume"], ["analogy", "a", "b"],
])
def test_malformed_command_lines_are_one_line(argv, capsys):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("w2v: error: ")
