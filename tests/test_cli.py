"""The `w2v` command line: a tiny run end to end, and every bad input as one line + exit code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import main
from helpers import error_line, tiny_corpus, train_tiny


def test_train_writes_a_complete_run_folder(tmp_path, capsys, backend_name):
    code, run = train_tiny(tmp_path, backend=backend_name)
    out = capsys.readouterr().out
    assert code == 0
    assert "tokens/sec on cpu" in out and "all-epoch mean loss" in out
    for name in ("config.json", "metrics.jsonl", "loss.png", "vectors.txt", "vocab.tsv",
                 "checkpoint.npz", "report.json"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "temporary files left"
    report = json.loads((run / "report.json").read_text())
    assert len(report["epochs"]) == 2
    assert report["epochs"][1]["mean_loss"] < report["epochs"][0]["mean_loss"]
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(p["kind"] == "point" for p in points) == 2 * 5  # five points an epoch
    from gensim.models import KeyedVectors

    vectors = KeyedVectors.load_word2vec_format(str(run / "vectors.txt"))
    assert vectors.vector_size == 16 and "chip" in vectors.key_to_index
    assert "<unk>" not in vectors.key_to_index

    code = main(["similar", "chip", "money", "-k", "2", "--run", str(run)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == "chip:" and lines[1].startswith("cosine sim=")
    assert len(lines) == 6


def test_similar_unknown_word_suggests_spellings(tmp_path, capsys):
    _, run = train_tiny(tmp_path)
    capsys.readouterr()
    assert main(["similar", "chipp", "--run", str(run)]) == 2
    line = error_line(capsys)
    assert "'chipp' is not in the vocabulary" in line and "chip" in line


@pytest.mark.parametrize("flags, fragment", [
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer"),
    (["--embed-size", "0"], "--embed-size must be a positive integer"),
    (["--max-window-size", "0"], "--max-window-size must be a positive integer"),
    (["--num-noise-words", "0"], "--num-noise-words must be a positive integer"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "-0.1"], "--lr must be a positive number"),
    (["--lr", "abc"], "invalid float value"),
    (["--sampling", "sometimes"], "invalid choice"),
    (["--lr-schedule", "cosine"], "invalid choice"),
    (["--backend", "theano"], "unknown backend 'theano': choose one of numpy"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "gpu:3"], "runs on the CPU only; this machine offers: cpu"),
    (["--batch-size", "100000"], "larger than the data"),
])
def test_bad_train_flags_are_one_line_errors(tmp_path, capsys, flags, fragment):
    code, run = train_tiny(tmp_path, *flags)
    assert code == 2
    assert fragment in error_line(capsys)


def test_existing_output_folder_needs_overwrite(tmp_path, capsys):
    assert train_tiny(tmp_path)[0] == 0
    capsys.readouterr()
    assert train_tiny(tmp_path)[0] == 2
    assert "pass --overwrite" in error_line(capsys)
    assert train_tiny(tmp_path, "--overwrite")[0] == 0


def test_run_folder_that_is_not_one(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["similar", "chip", "--run", str(tmp_path / "empty")]) == 2
    assert "is not a run folder" in error_line(capsys)
    assert main(["similar", "chip", "--run", str(tmp_path / "absent")]) == 2
    assert "does not exist" in error_line(capsys)


def test_missing_corpus_file_is_one_line(tmp_path, capsys):
    code = main(["train", "--backend", "numpy", "--corpus", str(tmp_path / "nope.txt"),
                 "--out", str(tmp_path / "run")])
    assert code != 0
    assert "nope.txt" in error_line(capsys)


def test_backend_flag_reads_environment_and_aliases(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("W2V_BACKEND", "theano")
    code = main(["train", "--corpus", str(tiny_corpus(tmp_path)), "--out", str(tmp_path / "r")])
    assert code == 2 and "unknown backend 'theano'" in error_line(capsys)


def test_backends_command_lists_every_backend(capsys):
    import backends

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in backends.names():
        assert out.count(f"{name} ") >= 1
    assert "numpy" in out and "devices: cpu" in out


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point: a bad flag is one stderr line and exit code 2."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-m", "common.cli", "train", "--epochs", "-3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "w2v: error: --epochs must be a positive integer, got -3"
    assert "Traceback" not in done.stderr


def test_backend_not_installed_names_the_install_command(tmp_path, capsys, monkeypatch):
    import backends

    real_missing = backends.missing
    monkeypatch.setattr(backends, "missing", lambda name: (
        "backend 'torch' needs torch, which is not installed: pip install -e '.[torch]'"
        if backends.canonical(name) == "torch" else real_missing(name)))
    code = main(["train", "--backend", "pytorch", "--corpus", str(tiny_corpus(tmp_path)),
                 "--out", str(tmp_path / "r")])
    assert code == 2
    assert "pip install -e '.[torch]'" in error_line(capsys)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_corpus_without_pairs_is_one_line(tmp_path, capsys):
    lonely = tmp_path / "lonely.txt"
    lonely.write_text("alpha\nbeta\ngamma\n", encoding="utf-8")  # one-word sentences only
    code = main(["train", "--backend", "numpy", "--corpus", str(lonely), "--min-freq", "1",
                 "--out", str(tmp_path / "r")])
    assert code != 0
    assert "yields no centre/context pair" in error_line(capsys)


def test_resample_mode_trains_and_differs_from_static(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--sampling", "resample")
    assert code == 0
    resampled = json.loads((run / "report.json").read_text())["all_epochs_mean_loss"]
    code, run = train_tiny(tmp_path, "--overwrite")
    assert code == 0
    static = json.loads((run / "report.json").read_text())["all_epochs_mean_loss"]
    assert resampled != static and abs(resampled - static) < 0.1
