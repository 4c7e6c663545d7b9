"""What several test modules share: small batches and corpora, a tiny CLI run, comparisons.

Test modules import these from here (`from helpers import ...`), never from one another.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import backends
from backends.base import Params
from common.batching import Batch
from common.cli import main

VOCAB, EMBED = 40, 6  # small: ids repeat within and across rows, as the gradient must sum


# Which backends ran or were skipped in this session, for the closing summary (conftest).
RAN: set[str] = set()
SKIPPED: dict[str, str] = {}


def required_backends() -> set[str]:
    """Backends this environment must run.

    `W2V_REQUIRE_BACKENDS` is `all`, `env:main` / `env:mxnet` (every backend the registry
    places in that Makefile environment, plus the NumPy reference, which runs everywhere), or
    a comma-separated list of names.
    """
    value = os.environ.get("W2V_REQUIRE_BACKENDS", "").strip()
    if not value:
        return set()
    if value == "all":
        return set(backends.names())
    if value.startswith("env:"):
        hosted = {n for n in backends.names() if backends.environment(n) == value[4:]}
        return hosted | {"numpy"}
    return {backends.canonical(name) for name in value.split(",") if name.strip()}


def require_backend(name: str) -> None:
    """Skip (or fail, when required) if `name` cannot load here; record that it ran."""
    reason = backends.missing(name)
    if reason:
        if name in required_backends():
            pytest.fail(f"required backend unavailable: {reason}")
        SKIPPED[name] = reason
        pytest.skip(reason)
    RAN.add(name)


def make_batch(rng: np.random.Generator, batch_size: int = 12, *,
               all_padding_row: bool = False, first_id: int = 1) -> Batch:
    """Random chapter-style batch: n_ctx contexts then 5 noise words per context, then padding.

    A small vocabulary makes ids repeat within and across rows (the gradient must sum them).
    Ids start at `first_id`, 1: 0 is the padding id (`<unk>`, which the pipeline never emits),
    which the sparse optimisers never touch.
    """
    num_contexts = rng.integers(1, 4, size=batch_size)
    if all_padding_row:
        num_contexts[-1] = 0  # as fixed-shape backends pad the last batch
    lengths = 6 * num_contexts
    slots = int(lengths.max())
    position = np.arange(slots)[None, :]
    masks = (position < lengths[:, None]).astype(np.float32)
    labels = (position < num_contexts[:, None]).astype(np.float32)
    ids = rng.integers(first_id, VOCAB, size=(batch_size, slots)).astype(np.int32)
    ids[masks == 0] = 0
    centers = rng.integers(first_id, VOCAB, size=(batch_size, 1)).astype(np.int32)
    return Batch(centers, ids, masks, labels)


def assert_params_close(actual: Params, expected: Params, **tolerance: float) -> None:
    """Both tables of `actual` equal `expected`'s within `tolerance`, naming the table."""
    for got, want, table in zip(actual, expected, Params._fields):
        np.testing.assert_allclose(got, want, err_msg=table, **tolerance)


def tiny_corpus(tmp_path: Path) -> Path:
    """A small text corpus with clear topics: 400 sentences, 3,200 centre words at t=1.

    3,200 is no multiple of 60 or 64, so small batch sizes leave a short last batch to pad.
    """
    rng = np.random.default_rng(0)
    topics = [["chip", "intel", "processor", "computer", "memory"],
              ["bank", "money", "loan", "credit", "interest"],
              ["president", "election", "vote", "senate", "party"]]
    lines = [" ".join(rng.choice(topics[rng.integers(3)], size=8)) for _ in range(400)]
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_ptb(tmp_path: Path) -> Path:
    """A folder in PTB's layout: the tiny corpus as train, a fresh draw of it as valid."""
    folder = tmp_path / "ptb"
    folder.mkdir()
    lines = tiny_corpus(tmp_path).read_text(encoding="utf-8").splitlines()
    (folder / "ptb.train.txt").write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    (folder / "ptb.valid.txt").write_text("\n".join(lines[300:] + ["zebra unicorn chip"]) + "\n",
                                          encoding="utf-8")
    return folder


def train_tiny(tmp_path: Path, *extra: str, backend: str = "numpy") -> tuple[int, Path]:
    """`w2v train` for 2 epochs on `tiny_corpus`; (exit code, run folder)."""
    run = tmp_path / "run"
    code = main(["train", "--backend", backend, "--corpus", str(tiny_corpus(tmp_path)),
                 "--min-freq", "1", "--epochs", "2", "--batch-size", "64", "--embed-size", "16",
                 "--subsample-t", "1", "--out", str(run), "--no-progress", *extra])
    return code, run


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one-line error a failed command printed on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("w2v: error: ")
    return err[0]
