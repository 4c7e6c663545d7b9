"""Interrupt and resume exactly, determinism, and faults that lose nothing (issue 9).

Every backend is interrupted in the middle of an epoch in a real subprocess (by the signal a
Ctrl-C sends), resumed in another, and must end with the same loss sequence and the same
parameters, bit for bit, as an uninterrupted run with the same seed.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import runs
from common.cli import main
from helpers import tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 50  # tiny corpus: 3,200 centre words at t=1, batches of 64


def _train_args(corpus: Path, run: Path, backend: str, epochs: int = 2,
                step: str = "fast") -> list[str]:
    return ["train", "--backend", backend, "--corpus", str(corpus), "--min-freq", "1",
            "--epochs", str(epochs), "--batch-size", "64", "--embed-size", "16",
            "--subsample-t", "1", "--seed", "3", "--step", step, "--out", str(run),
            "--no-progress", "--query"]


def _w2v(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def _figures(run: Path) -> tuple[list, list]:
    """The loss sequence: every plotted point and every epoch's loss, as written."""
    rows = [json.loads(line) for line in (run / runs.METRICS).read_text().splitlines()]
    points = [(r["epoch"], r["loss"], r["interval_loss"]) for r in rows if r["kind"] == "point"]
    epochs = [(r["epoch"], r["loss"], r["centre_words"]) for r in rows if r["kind"] == "epoch"]
    return points, epochs


def _assert_same_run(first: Path, second: Path) -> None:
    assert _figures(first) == _figures(second)
    one, two = runs.load_checkpoint(first), runs.load_checkpoint(second)
    for name, array in one.arrays().items():
        assert np.array_equal(array, two.arrays()[name]), name
    assert one.adam_step == two.adam_step


def _one_error_line(stderr: str) -> str:
    # Without a C++ compiler the mxnet backend says once that it falls back to MXNet's Adam.
    lines = [line for line in stderr.strip().splitlines()
             if not line.startswith("w2v: mxnet uses MXNet's adam_update")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("w2v: error: ")
    return lines[0]


def test_interrupted_run_resumes_exactly(tmp_path, backend_name, step):
    corpus = tiny_corpus(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(_train_args(corpus, whole, backend_name, step=step)) == 0

    # Ctrl-C 70 batches in: in the middle of epoch 2 (50 batches an epoch).
    interrupted = _w2v(_train_args(corpus, cut, backend_name, step=step),
                       W2V_INTERRUPT_AFTER_BATCHES="70")
    assert interrupted.returncode == 130, interrupted.stderr
    line = _one_error_line(interrupted.stderr)
    assert "interrupted in epoch 2" in line and f"w2v train --resume {cut}" in line
    stopped = runs.load_checkpoint(cut).position
    assert stopped["epoch"] == 1 and 0 < stopped["batch"] < BATCHES_PER_EPOCH
    assert not (cut / runs.VECTORS).exists()  # nothing pretends the run finished

    resumed = _w2v(["train", "--resume", str(cut), "--no-progress", "--query"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {cut} in epoch 2 of 2, after batch {stopped['batch']}" in resumed.stdout
    _assert_same_run(whole, cut)


def test_sigterm_mid_epoch_exits_143_and_resumes_exactly(tmp_path):
    corpus = tiny_corpus(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(_train_args(corpus, whole, "numpy")) == 0  # numpy: in both environments
    interrupted = _w2v(_train_args(corpus, cut, "numpy"), W2V_INTERRUPT_AFTER_BATCHES="13",
                       W2V_INTERRUPT_SIGNAL="SIGTERM")
    assert interrupted.returncode == 143, interrupted.stderr
    assert "--resume" in _one_error_line(interrupted.stderr)
    assert runs.load_checkpoint(cut).position["epoch"] == 0  # stopped inside epoch 1
    assert _w2v(["train", "--resume", str(cut), "--no-progress", "--query"]).returncode == 0
    _assert_same_run(whole, cut)


def _start_long_training(corpus: Path, run: Path) -> subprocess.Popen:
    """A 40-epoch numpy training in another process, returned once its first epoch is done."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "common.cli", *_train_args(corpus, run, "numpy", 40)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("epoch 1:"):
            break
    return process


def test_a_signal_from_outside_stops_at_a_batch_boundary_and_resumes(tmp_path):
    """A real Ctrl-C from another process, at whatever moment it lands."""
    run = tmp_path / "run"
    process = _start_long_training(tiny_corpus(tmp_path), run)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in _one_error_line(stderr)
    position = runs.load_checkpoint(run).position
    assert 1 <= position["epoch"] < 40
    resumed = _w2v(["train", "--resume", str(run), "--epochs", "40", "--no-progress",
                    "--query"])
    assert resumed.returncode == 0, resumed.stderr
    assert len(_figures(run)[1]) == 40


def test_same_seed_gives_bit_identical_runs(tmp_path, backend_name, step):
    corpus = tiny_corpus(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_train_args(corpus, first, backend_name, step=step)) == 0
    assert main(_train_args(corpus, second, backend_name, step=step)) == 0
    _assert_same_run(first, second)


def test_resume_can_train_longer_and_refuses_a_finished_run(tmp_path, capsys):
    corpus = tiny_corpus(tmp_path)
    run, longer = tmp_path / "run", tmp_path / "longer"
    assert main(_train_args(corpus, run, "numpy", epochs=1)) == 0
    assert main(_train_args(corpus, longer, "numpy", epochs=2)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "already trained 1 of 1 epochs: pass --epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    _assert_same_run(run, longer)  # 1 epoch, then 1 more == 2 epochs at once


def test_resume_finishes_a_run_stopped_after_its_last_epoch(tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_corpus(tmp_path), run, "numpy", epochs=1)) == 0
    vectors = (run / runs.VECTORS).read_bytes()
    for name in (runs.VECTORS, runs.REPORT, runs.EVALUATION):  # as if stopped while exporting
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / runs.VECTORS).read_bytes() == vectors and (run / runs.REPORT).is_file()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.01"], "--lr cannot be given with --resume"),
    (["--out", "x"], "--out cannot be given with --resume"),
])
def test_resume_keeps_the_run_configuration(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    assert main(_train_args(tiny_corpus(tmp_path), run, "numpy", epochs=1)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), *flags]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


# -- checkpoints that cannot be trusted --------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    run = folder / "run"
    assert main(_train_args(tiny_corpus(folder), run, "numpy", epochs=1)) == 0
    return run


def _copy_run(source: Path, destination: Path) -> Path:
    destination.mkdir()
    for path in source.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def _rewrite_checkpoint(run: Path, **changes: np.ndarray) -> None:
    """Rewrite the npz with some entries changed and everything else, checksum too, kept."""
    with np.load(run / runs.CHECKPOINT) as stored:
        entries = {name: stored[name] for name in stored.files}
    entries.update(changes)
    with open(run / runs.CHECKPOINT, "wb") as handle:
        np.savez(handle, **entries)


def _truncate(run: Path) -> None:
    data = (run / runs.CHECKPOINT).read_bytes()
    (run / runs.CHECKPOINT).write_bytes(data[:len(data) // 2])


def _flip_a_byte(run: Path) -> None:
    """One byte in the middle of the stored parameters (not in a zip header's padding)."""
    import zipfile

    with zipfile.ZipFile(run / runs.CHECKPOINT) as archive:
        member = archive.getinfo("center.npy")
    data = bytearray((run / runs.CHECKPOINT).read_bytes())
    name_and_extra = int.from_bytes(data[member.header_offset + 26:member.header_offset + 28],
                                    "little") + \
        int.from_bytes(data[member.header_offset + 28:member.header_offset + 30], "little")
    data[member.header_offset + 30 + name_and_extra + member.compress_size // 2] ^= 0xFF
    (run / runs.CHECKPOINT).write_bytes(bytes(data))


def _tamper_values(run: Path) -> None:
    with np.load(run / runs.CHECKPOINT) as stored:
        center = stored["center"].copy()
    center[1, 0] += 0.5
    _rewrite_checkpoint(run, center=center)


def _newer_format(run: Path) -> None:
    _rewrite_checkpoint(run, format=np.int64(runs.CHECKPOINT_FORMAT + 1))


def _older_format(run: Path) -> None:
    _rewrite_checkpoint(run, format=np.int64(1))


def _other_vocabulary(run: Path) -> None:
    lines = (run / runs.VOCAB).read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # same size, another index order
    (run / runs.VOCAB).write_text("\n".join(lines) + "\n")


def _other_embedding_size(run: Path) -> None:
    with np.load(run / runs.CHECKPOINT) as stored:
        arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(stored["meta"]))
    shape = (arrays["center"].shape[0], 8)
    for name in ("center", "context", "exp_avg_center", "exp_avg_context", "exp_avg_sq_center",
                 "exp_avg_sq_context"):
        arrays[name] = arrays[name][:, :8].copy()
    meta["shape"] = list(shape)
    checkpoint = runs.Checkpoint(arrays["center"], arrays["context"], meta["adam_step"],
                                 (arrays["exp_avg_center"], arrays["exp_avg_context"]),
                                 (arrays["exp_avg_sq_center"], arrays["exp_avg_sq_context"]),
                                 meta["training"], meta["vocab_digest"])
    runs.save_checkpoint(run, checkpoint)  # a valid checkpoint, of a 8-dimensional model


def _missing(run: Path) -> None:
    (run / runs.CHECKPOINT).unlink()


@pytest.mark.parametrize("damage, message", [
    (_truncate, "is corrupt or truncated"),
    (_flip_a_byte, "is corrupt or truncated|fails its checksum"),
    (_tamper_values, "fails its checksum"),
    (_newer_format, "newer than this version of w2v-multi reads"),
    (_older_format, "has the old format 1"),
    (_other_vocabulary, "trained on another vocabulary"),
    (_other_embedding_size, "16 words x 8 dimensions, but"),
    (_missing, "no checkpoint yet|not a run folder"),
])
@pytest.mark.parametrize("command", ["resume", "similar"])
def test_a_bad_checkpoint_is_one_line_and_is_left_alone(tmp_path, capsys, trained_run, damage,
                                                        message, command):
    run = _copy_run(trained_run, tmp_path / "run")
    damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    if command == "resume":
        code = main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"])
    else:
        code = main(["similar", "chip", "--run", str(run)])
    assert code in (1, 2)
    line = _one_error_line(capsys.readouterr().err)
    assert any(part in line for part in message.split("|")), line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched


def _as_format_2(run: Path, batch: int) -> None:
    """The checkpoint as the whole-epoch pipeline (format 2) would have left it at `batch`."""
    checkpoint = runs.load_checkpoint(run)
    training = dict(checkpoint.training, position=dict(checkpoint.position, batch=batch))
    with pytest.MonkeyPatch.context() as patch:  # as that version wrote it: meta and checksum
        patch.setattr(runs, "CHECKPOINT_FORMAT", 2)
        runs.save_checkpoint(run, checkpoint._replace(training=training))


def test_a_format_2_checkpoint_resumes_only_from_an_epoch_boundary(tmp_path, capsys,
                                                                   trained_run):
    middle = _copy_run(trained_run, tmp_path / "middle")
    _as_format_2(middle, batch=3)
    before = {p.name: p.read_bytes() for p in middle.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(middle), "--epochs", "2", "--no-progress"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "stopped in the middle of epoch" in line and "format 2" in line, line
    assert {p.name: p.read_bytes() for p in middle.iterdir()} == before
    boundary = _copy_run(trained_run, tmp_path / "boundary")
    _as_format_2(boundary, batch=0)
    assert main(["train", "--resume", str(boundary), "--epochs", "2", "--no-progress"]) == 0
    assert "continuing at its epoch boundary" in capsys.readouterr().out
    assert runs.load_checkpoint(boundary).format == runs.CHECKPOINT_FORMAT


# -- the run folder's lock ---------------------------------------------------------------------

def test_a_second_training_into_a_busy_folder_is_refused(tmp_path, capsys, trained_run):
    run = _copy_run(trained_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    corpus = tiny_corpus(tmp_path)
    with runs.locked(run):  # as a training in another process would hold it
        capsys.readouterr()
        assert main(_train_args(corpus, run, "numpy") + ["--overwrite"]) == 1
        assert "is in use by another training" in _one_error_line(capsys.readouterr().err)
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 1
        assert "is in use by another training" in _one_error_line(capsys.readouterr().err)
        assert main(["similar", "chip", "--run", str(run)]) == 0  # reading is fine meanwhile
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0


def test_the_lock_is_held_by_a_running_training_in_another_process(tmp_path):
    corpus = tiny_corpus(tmp_path)
    run = tmp_path / "run"
    process = _start_long_training(corpus, run)
    try:
        second = _w2v(_train_args(corpus, run, "numpy") + ["--overwrite"])
    finally:
        process.terminate()
        process.communicate(timeout=120)
    assert second.returncode == 1
    assert "is in use by another training" in _one_error_line(second.stderr)
    assert process.returncode == 143  # SIGTERM: checkpointed, resumable
    assert runs.load_checkpoint(run).position["epoch"] >= 1


# -- writes that fail --------------------------------------------------------------------------

@pytest.mark.parametrize("failure, words", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
@pytest.mark.parametrize("where", ["replace", "create"])
def test_a_failed_write_keeps_the_previous_files(tmp_path, capsys, monkeypatch, trained_run,
                                                 failure, words, where):
    """The checkpoint at the end of a resumed epoch cannot be written: say which file, keep
    the old one (and every other result) as it was, leave no temporary behind."""
    import tempfile

    run = _copy_run(trained_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != runs.CONFIG}
    real_replace, real_mkstemp = os.replace, tempfile.mkstemp

    def replace(source, destination):
        if str(destination).endswith(runs.CHECKPOINT):
            raise failure
        return real_replace(source, destination)

    def mkstemp(*args, **kwargs):
        if runs.CHECKPOINT in kwargs.get("prefix", ""):
            raise failure
        return real_mkstemp(*args, **kwargs)

    if where == "replace":  # the disk fills up while the file is written
        monkeypatch.setattr("common.io.os.replace", replace)
    else:  # the folder refuses new files
        monkeypatch.setattr("common.io.tempfile.mkstemp", mkstemp)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {run / runs.CHECKPOINT}" in line and words in line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.name != runs.CONFIG}
    assert after == before  # no temporaries either
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_run_folder_is_one_line(tmp_path, capsys, trained_run):
    run = _copy_run(trained_run, tmp_path / "run")
    run.chmod(0o555)
    try:
        assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 1
        assert "Permission denied" in _one_error_line(capsys.readouterr().err)
    finally:
        run.chmod(0o755)


def test_resume_of_a_folder_without_checkpoint_says_so(tmp_path, capsys, trained_run):
    run = _copy_run(trained_run, tmp_path / "run")
    (run / runs.CHECKPOINT).unlink()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 1
    assert "has no checkpoint yet" in _one_error_line(capsys.readouterr().err)


def test_ctrl_c_before_training_starts_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("common.data.prepare_training_data", interrupted)
    code = main(_train_args(tiny_corpus(tmp_path), tmp_path / "run", "numpy"))
    assert code == 130
    assert capsys.readouterr().err.strip() == \
        "w2v: interrupted; files already written are complete"
