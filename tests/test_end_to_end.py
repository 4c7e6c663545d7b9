"""The chapter reproduced on PTB, per backend: 5 epochs, its hyperparameters, its figures.

Marked slow; CI runs it on the shared PTB copy (`W2V_PTB`). Each backend trains once per
session (a module-scoped run) and several tests read the result.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.cli import main
from conftest import PTB_ALL_EPOCHS_MEAN, PTB_EPOCH_LOSSES, PTB_LOSS_TOLERANCE

pytestmark = pytest.mark.slow

_RUNS: dict[str, tuple[Path, str]] = {}


@pytest.fixture
def chapter_run(backend_name: str, ptb_data: Path, tmp_path_factory: pytest.TempPathFactory,
                capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """Train with the chapter's defaults once per backend; return (run folder, stdout)."""
    if backend_name not in _RUNS:
        run = tmp_path_factory.mktemp(f"ptb-{backend_name}") / "run"
        code = main(["train", "--backend", backend_name, "--corpus", "ptb", "--data",
                     str(ptb_data), "--out", str(run), "--no-progress"])
        out = capsys.readouterr().out
        assert code == 0, out
        _RUNS[backend_name] = (run, out)
    return _RUNS[backend_name]


def test_chapter_loss_and_the_established_epoch_figures(chapter_run):
    run, out = chapter_run
    report = json.loads((run / "report.json").read_text())
    losses = [epoch["mean_loss"] for epoch in report["epochs"]]
    print(f"PTB epoch losses {[round(loss, 5) for loss in losses]}, all-epoch mean "
          f"{report['all_epochs_mean_loss']:.5f}")
    # The chapter prints loss 0.410: the mean over all five epochs' batches.
    assert abs(report["all_epochs_mean_loss"] - 0.410) <= 0.003, report["all_epochs_mean_loss"]
    assert report["all_epochs_mean_loss"] == pytest.approx(PTB_ALL_EPOCHS_MEAN,
                                                           abs=PTB_LOSS_TOLERANCE)
    assert losses == pytest.approx(list(PTB_EPOCH_LOSSES), abs=PTB_LOSS_TOLERANCE), losses
    assert "tokens/sec on cpu" in out


def test_vectors_load_in_gensim_with_sensible_neighbours(chapter_run):
    from gensim.models import KeyedVectors

    run, _ = chapter_run
    vectors = KeyedVectors.load_word2vec_format(str(run / "vectors.txt"))
    assert len(vectors.key_to_index) == 6718 and vectors.vector_size == 100
    neighbours = [word for word, _ in vectors.most_similar("chip", topn=10)]
    # The chapter finds microprocessor, chips, intel; any of the computing words will do.
    assert {"microprocessor", "chips", "intel", "computer", "semiconductor"} & set(neighbours), \
        neighbours
