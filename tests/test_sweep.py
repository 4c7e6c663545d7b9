"""`w2v sweep` on a tiny corpus: the grid, the table, the re-run, the one-line errors."""
from __future__ import annotations

import json
import math

import pytest

from common.cli import main
from common.config import TrainConfig
from common.errors import ConfigError
from common.sweep import expand, is_chapter_default
from helpers import error_line, tiny_ptb


def _sweep(tmp_path, *extra: str) -> int:
    return main(["sweep", "--backend", "numpy", "--corpus", "ptb",
                 "--data", str(tmp_path / "ptb"), "--min-freq", "1", "--epochs", "1",
                 "--embed-size", "8", "--subsample-t", "1", "--out", str(tmp_path / "sweep"),
                 *extra])


def test_expand_names_validates_and_marks_the_chapter():
    points = expand({"lr": [0.002, 0.01], "embed_size": [100], "backend": ["pytorch"]})
    assert [name for name, _ in points] == ["lr=0.002", "lr=0.01"]
    assert [config.backend for _, config in points] == ["torch", "torch"]
    assert [is_chapter_default(config) for _, config in points] == [True, False]
    assert is_chapter_default(TrainConfig(seed=3, backend="jax"))  # neither is a hyperparameter
    with pytest.raises(ConfigError, match="--epochs must be a positive integer, got 0"):
        expand({"epochs": [1, 0]})
    with pytest.raises(ConfigError, match="--backend takes one value"):
        expand({"backend": ["torch", "jax"]})


def test_sweep_trains_every_point_and_writes_the_table(tmp_path, capsys):
    tiny_ptb(tmp_path)
    assert _sweep(tmp_path, "--batch-size", "64,100000", "--lr", "0.002,0.01") == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("[") for line in out) == 4  # one progress line per point
    sweep = tmp_path / "sweep"
    rows = [json.loads(line) for line in (sweep / "sweep.jsonl").read_text().splitlines()]
    assert [row["point"] for row in rows] == [
        "lr=0.002_batch_size=64", "lr=0.002_batch_size=100000",
        "lr=0.01_batch_size=64", "lr=0.01_batch_size=100000"]
    trained = [row for row in rows if not row.get("error")]
    assert len(trained) == 2
    for row in trained:
        assert 0 < row["valid_loss"] < 1 and len(row["valid_losses"]) == 1
        assert row["seconds"] > 0 and row["words_per_second"] > 0
        assert (sweep / row["point"] / "vectors.txt").is_file()
    # A batch larger than the data is that point's failure, not the sweep's.
    assert all("larger than the data" in row["error"] for row in rows if row.get("error"))
    table = (sweep / "sweep.tsv").read_text().splitlines()
    assert table[0].split("\t")[:4] == ["point", "chapter", "lr", "batch_size"]
    assert len(table) == 5 and table[1].split("\t")[2:4] == ["0.002", "64"]
    assert (sweep / "sweep.png").stat().st_size > 0


def test_a_rerun_trains_only_the_missing_points(tmp_path, capsys):
    tiny_ptb(tmp_path)
    assert _sweep(tmp_path, "--lr", "0.002,0.01") == 0
    rows_file = tmp_path / "sweep" / "sweep.jsonl"
    first, second = rows_file.read_text().splitlines()
    rows_file.write_text(first + "\n")  # as if interrupted during the second point
    capsys.readouterr()
    assert _sweep(tmp_path, "--lr", "0.002,0.01") == 0
    out = capsys.readouterr().out
    assert "1 already done" in out and "[2/2] lr=0.01" in out and "[1/2]" not in out
    assert len(rows_file.read_text().splitlines()) == 2
    assert json.loads(rows_file.read_text().splitlines()[0]) == json.loads(first)
    # Another grid in the same folder is refused; --overwrite retrains it all.
    assert _sweep(tmp_path, "--lr", "0.005") == 2
    assert "holds another sweep" in error_line(capsys)
    assert _sweep(tmp_path, "--lr", "0.005", "--overwrite") == 0
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert [row["config"]["lr"] for row in rows] == [0.005]
    assert math.isfinite(rows[0]["valid_loss"])


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.001,-1"], "--lr must be a positive number, got -1.0"),
    (["--lr", "0.001,abc"], "invalid float in comma-separated list"),
    (["--sampling", "static,often"], "--sampling must be one of static, resample"),
    (["--embed-size", "8,8"], "--embed-size lists a value twice"),
    (["--backend", "nosuch"], "unknown backend"),
])
def test_bad_grids_fail_in_one_line_before_training(tmp_path, capsys, flags, message):
    code = main(["sweep", "--corpus", "lee", "--out", str(tmp_path / "sweep"), *flags])
    assert code == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "sweep").exists()
