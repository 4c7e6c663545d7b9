"""The fault table (issue 18): nothing lost, nothing unbounded, every file read is validated.

One family per promise of the reliability section of tests/README.md:

1. replace, never delete first: a failing `--overwrite` leaves the old run byte for byte;
2. the resource preflight: sizes that cannot fit are refused before they are allocated;
3. every file the project reads is validated (a table of damage, then Hypothesis mutations
   of each file through every command that reads it);
4. filesystem and process edges (pipes, devices, read-only folders, umask, leftover
   temporaries, signals at any point);
5. strict JSON.

Everything runs in-process through `common.cli.main` on the NumPy reference (both
environments have it), on a tiny corpus, with a bounded number of Hypothesis examples and a
bounded wall time per command: a hang fails the test instead of blocking the suite.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common import preflight, runs
from common.cli import main
from common.config import TrainConfig
from helpers import require_backend, tiny_corpus

TINY = ["--backend", "numpy", "--min-freq", "1", "--batch-size", "64", "--embed-size", "16",
        "--subsample-t", "1", "--seed", "3", "--no-progress"]
COMMAND_SECONDS = 120  # a command that runs longer than this has hung


def _train(corpus: Path, run: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", *TINY, "--corpus", str(corpus), "--epochs", str(epochs), "--out", str(run),
            *extra, "--query"]


@contextlib.contextmanager
def _bounded(seconds: int = COMMAND_SECONDS) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging: a command that blocks on a pipe is a bug."""
    def expire(signum, frame):  # noqa: ANN001
        raise TimeoutError(f"the command ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """`w2v ARGS` in-process: (exit code, stdout, stderr).

    A warning that a user would see on stderr (Python shows RuntimeWarning, UserWarning and
    the like by default) is one line too many: it fails the test.
    """
    capsys.readouterr()
    with _bounded(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                       ResourceWarning):
            warnings.simplefilter("ignore", hidden)
        code = main(args)
    out, err = capsys.readouterr()
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    return code, out, err


def _error_line(err: str) -> str:
    """The one line a failure prints (notes aside), which must be the only one."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("w2v: note:")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("w2v: error: ") or lines[0].startswith("w2v: stopped by") \
        or lines[0].startswith("w2v: interrupted"), lines[0]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny corpus, a finished one-epoch run and a finished two-point sweep (made once)."""
    require_backend("numpy")
    folder = tmp_path_factory.mktemp("faults")
    corpus = tiny_corpus(folder)
    run = folder / "run"
    assert main(_train(corpus, run)) == 0
    sweep = folder / "sweep"
    assert main(_sweep_args(corpus, sweep)) == 0
    return {"folder": folder, "corpus": corpus, "run": run, "sweep": sweep}


def _sweep_args(corpus: Path, out: Path) -> list[str]:
    return ["sweep", *TINY[:-1], "--corpus", str(corpus), "--epochs", "1", "--lr",
            "0.002,0.01", "--out", str(out)]


# -- 1. replace, never delete first ------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _no_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: (4096, "cgroup limit"))


def _interrupt_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr("common.data.load_encoded", interrupted)


def _diverge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first epoch's losses are NaN (as a far too large --lr gives)."""
    from backends.numpy.backend import NumpyBackend

    real = NumpyBackend.losses_to_numpy
    monkeypatch.setattr(NumpyBackend, "losses_to_numpy",
                        lambda self, losses: real(self, losses) * np.nan)


# (case, extra flags given a scratch folder, setup, exit code, fragment of the one line)
OVERWRITE_FAILURES = [
    ("missing corpus", lambda d: ["--corpus", str(d / "nope.txt")], None, 1, "does not exist"),
    ("corpus not UTF-8", lambda d: ["--corpus", str(_write(d / "latin1.txt", b"caf\xe9 ok\n"))],
     None, 1, "is not UTF-8"),
    ("empty corpus", lambda d: ["--corpus", str(_write(d / "empty.txt", b"\n \n"))], None, 1,
     "holds no tokens"),
    ("corpus is a device", lambda d: ["--corpus", "/dev/zero"], None, 1,
     "not a regular file"),
    ("unknown backend", lambda d: ["--backend", "theano"], None, 2, "unknown backend"),
    ("missing device", lambda d: ["--device", "gpu:7"], None, 2, "not available here"),
    ("embedding too large", lambda d: ["--embed-size", str(10**9)], None, 2,
     "needs about"),
    ("memory too small (cgroup)", lambda d: [], _no_memory, 2,
     "are available (cgroup limit)"),
    ("batch larger than the data", lambda d: ["--batch-size", "100000"], None, 2,
     "larger than the data"),
    ("epochs beyond any run", lambda d: ["--epochs", "99999999999999999999"], None, 2,
     "--epochs must be at most"),
    ("diverges in its first epoch", lambda d: [], _diverge, 1, "diverged"),
    ("Ctrl-C while reading the corpus", lambda d: [], _interrupt_reading, 130, "interrupted"),
]


@pytest.mark.parametrize("case, flags, setup, code, fragment", OVERWRITE_FAILURES,
                         ids=[case[0] for case in OVERWRITE_FAILURES])
def test_a_failing_overwrite_leaves_the_old_run_byte_identical(
        tmp_path, capsys, monkeypatch, world, case, flags, setup, code, fragment):
    run = _copy(world["run"], tmp_path / "run")
    before = _snapshot(run)
    if setup is not None:
        setup(monkeypatch)
    args = _train(world["corpus"], run, "--overwrite")
    got, _, err = _run(capsys, args[:-1] + flags(tmp_path) + ["--query"])
    assert got == code, err
    assert fragment in _error_line(err)
    assert _snapshot(run) == before
    monkeypatch.undo()
    assert _run(capsys, ["similar", "chip", "--run", str(run)])[0] == 0  # still a run


def test_the_old_run_stays_readable_until_the_new_first_checkpoint(tmp_path, capsys,
                                                                    monkeypatch, world):
    """While the new run trains its first epoch, the old one answers queries unchanged."""
    from common.session import _Session

    run = _copy(world["run"], tmp_path / "run")
    before = _snapshot(run)
    seen = []
    real_fit = _Session.fit

    def fit(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        seen.append(_snapshot(run) == before)
        seen.append(main(["similar", "chip", "--run", str(run)]) == 0)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(_Session, "fit", fit)
    code, _, err = _run(capsys, _train(world["corpus"], run, "--overwrite", "--embed-size", "8"))
    assert code == 0, err
    assert seen == [True, True]
    assert runs.load_config(run).embed_size == 8  # replaced once it had a checkpoint
    assert runs.load_checkpoint(run).center.shape[1] == 8


def test_a_failing_overwrite_into_a_new_folder_leaves_nothing(tmp_path, capsys, world):
    run = tmp_path / "fresh" / "run"
    code, _, err = _run(capsys, _train(tmp_path / "nope.txt", run))
    assert code == 1 and "does not exist" in _error_line(err)
    assert not run.exists()


def test_a_failing_sweep_overwrite_leaves_the_old_sweep_whole(tmp_path, capsys, world):
    sweep = _copy(world["sweep"], tmp_path / "sweep")
    before = _snapshot(sweep)
    args = _sweep_args(tmp_path / "nope.txt", sweep) + ["--overwrite"]
    code, _, err = _run(capsys, args)
    assert code == 1 and "does not exist" in _error_line(err)
    assert _snapshot(sweep) == before
    assert all(_snapshot(sweep / point) == _snapshot(world["sweep"] / point)
               for point in ("lr=0.002", "lr=0.01"))


# -- 2. the resource preflight -----------------------------------------------------------------

@pytest.fixture
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any epoch array or backend built from here on fails the test."""
    from backends.numpy.backend import NumpyBackend
    from common.stream import EpochData

    def allocated(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("an allocation was reached")

    monkeypatch.setattr(EpochData, "__init__", allocated)
    monkeypatch.setattr(NumpyBackend, "__init__", allocated)


@pytest.mark.parametrize("flag", ["--embed-size", "--num-noise-words"])
def test_sizes_that_cannot_fit_are_refused_before_any_allocation(tmp_path, capsys, world,
                                                                  no_allocation, flag):
    code, _, err = _run(capsys, _train(world["corpus"], tmp_path / "run", flag, str(10**12)))
    line = _error_line(err)
    assert code == 2 and "needs about" in line and "are available" in line, line
    assert re.search(r"needs about [\d.]+ [KMGTPE]iB", line)


def test_the_preflight_names_the_bytes_needed_and_available(tmp_path, capsys, monkeypatch,
                                                            world, no_allocation):
    monkeypatch.setattr(preflight, "available_memory", lambda: (3 * 1024**2, "cgroup limit"))
    code, _, err = _run(capsys, _train(world["corpus"], tmp_path / "run"))
    line = _error_line(err)
    assert code == 2
    assert "are available (cgroup limit)" in line and "3.0 MiB" in line
    for item in ("tables", "gradients", "optimizer state", "padded batch", "epoch arrays"):
        assert item in line


def test_resume_runs_the_preflight_on_an_edited_config(tmp_path, capsys, world, no_allocation):
    run = _copy(world["run"], tmp_path / "run")
    config = json.loads((run / runs.CONFIG).read_text())
    config["num_noise_words"] = 10**9  # edited by hand before --resume
    (run / runs.CONFIG).write_text(json.dumps(config))
    code, _, err = _run(capsys, ["train", "--resume", str(run), "--epochs", "2",
                                 "--no-progress"])
    assert code == 2 and "needs about" in _error_line(err)


def test_a_sweep_point_that_cannot_fit_is_marked_failed(tmp_path, capsys, world):
    code, out, err = _run(capsys, ["sweep", *TINY[:-1], "--corpus", str(world["corpus"]),
                                   "--epochs", "1", "--embed-size", f"8,{10**11}",
                                   "--out", str(tmp_path / "sweep")])
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text()
            .splitlines()]
    assert [bool(row.get("error")) for row in rows] == [False, True]
    assert "needs about" in rows[1]["error"]


def test_available_memory_reads_the_cgroup_limit(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "memory.max").write_text("1073741824\n")
    (root / "memory.current").write_text("268435456\n")
    real_path = preflight.Path
    monkeypatch.setattr(preflight, "Path",
                        lambda name: root if name == "/sys/fs/cgroup" else real_path(name))
    free, source = preflight.available_memory()
    assert source == "cgroup limit" and free == 768 * 1024**2
    (root / "memory.max").write_text("max\n")  # no limit: the kernel's figure
    assert preflight.available_memory()[1] == "MemAvailable"


def _corpus_with_long_sentences(folder: Path, sentences: int = 2000) -> Path:
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(300)]
    lines = [" ".join(rng.choice(words, size=rng.integers(2, 30))) for _ in range(sentences)]
    path = folder / "long.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("sampling, window", [("static", 5), ("static", 40), ("resample", 40)])
def test_the_estimate_bounds_what_a_run_allocates(tmp_path, world, sampling, window):
    """The NumPy peak of a real run (traced) stays under the estimate, and near it."""
    from common.session import train_run

    config = TrainConfig(backend="numpy", corpus=str(_corpus_with_long_sentences(tmp_path)),
                         min_freq=1, embed_size=32, batch_size=128, epochs=1,
                         subsample_t=1e-3, sampling=sampling, max_window_size=window)
    real_check, seen = preflight.check, {}

    def check(*args, **kwargs):  # noqa: ANN002, ANN003
        seen["estimate"] = real_check(*args, **kwargs)
        tracemalloc.reset_peak()
        seen["base"] = tracemalloc.get_traced_memory()[0]
        return seen["estimate"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preflight, "check", check)
        tracemalloc.start()
        try:
            train_run(config, tmp_path / "run", log=lambda line: None, progress=False,
                      evaluate_at_end=False)
            peak = tracemalloc.get_traced_memory()[1] - seen["base"]
        finally:
            tracemalloc.stop()
    estimate = seen["estimate"].total
    assert peak <= estimate <= 5 * peak, (peak, seen["estimate"].items)


def test_the_padded_width_is_capped_by_the_longest_sentence(tmp_path, capsys):
    """A window wider than every sentence allocates no more than the sentences can give, and
    draws the very same examples."""
    from common.stream import EpochData, make_rows
    from common.vocab import EncodedCorpus

    corpus = EncodedCorpus.from_ids([[1, 2, 3, 4, 5, 6]] * 2500)  # 15,000 tokens
    counts = np.bincount(corpus.tokens, minlength=7)
    epochs = EpochData(corpus, counts, max_window_size=10**6, num_noise_words=5, t=1.0,
                       batch_size=512, seed=0)
    assert epochs.reach == 5  # 6 - 1, not 10**6
    plan = epochs.plan(0)
    indices = np.arange(plan.num_examples)
    draws = dict(max_window_size=10**6, num_noise_words=5, sampler=epochs.sampler,
                 window_key=11, noise_key=12)
    capped = make_rows(corpus, plan, indices, reach=epochs.reach, **draws)
    wide = make_rows(corpus, plan, indices, reach=40, **draws)
    assert capped.contexts_negatives.shape == (15000, 60)  # 2 * 5 * (1 + 5)
    assert np.array_equal(wide.num_contexts, capped.num_contexts)
    is_context = np.arange(60) < capped.num_contexts[:, None]
    assert np.array_equal(wide.contexts_negatives[:, :60][is_context],
                          capped.contexts_negatives[is_context])
    path = tmp_path / "six.txt"
    path.write_text("a b c d e f\n" * 2500)
    code, _, err = _run(capsys, ["train", *TINY, "--corpus", str(path), "--epochs", "1",
                                 "--max-window-size", str(10**8), "--out", str(tmp_path / "r"),
                                 "--query"])
    assert code == 0, err


# -- 3. every file read is validated: a table of damage ----------------------------------------

def _rewrite_checkpoint(run: Path, **changes) -> None:  # noqa: ANN003
    """Save the checkpoint again with fields changed: a valid checksum over invalid meaning."""
    checkpoint = runs.load_checkpoint(run)._replace(**changes)
    runs.save_checkpoint(run, checkpoint)


def _position(run: Path, **position) -> None:  # noqa: ANN003
    training = json.loads(json.dumps(runs.load_checkpoint(run).training))
    training["position"].update(position)
    _rewrite_checkpoint(run, training=training)


def _absurd_npz_header(run: Path) -> None:
    """center.npy's header promises (10**9, 10**9) floats: np.load would allocate 4 EB."""
    path = run / runs.CHECKPOINT
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**9)})
    center = io.BytesIO(members["center.npy"])
    np.lib.format.read_magic(center)
    np.lib.format.read_array_header_1_0(center)
    members["center.npy"] = header.getvalue() + center.read()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _edit_json(name: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        value = json.loads((run / name).read_text())
        result = edit(value)
        (run / name).write_text(json.dumps(value if result is None else result))
    return apply


def _edit_text(name: str, edit: Callable[[str], str]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).write_text(edit((run / name).read_text()))
    return apply


def _drop_vector(word: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        lines = (run / runs.VECTORS).read_text().splitlines()
        count, size = lines[0].split()
        kept = [line for line in lines[1:] if not line.startswith(word + " ")]
        (run / runs.VECTORS).write_text("\n".join([f"{int(count) - 1} {size}", *kept]) + "\n")
    return apply


RESUME = ["train", "--resume", "{run}", "--epochs", "2", "--no-progress", "--query"]
SIMILAR = ["similar", "chip", "--run", "{run}"]
EVALUATE = ["evaluate", "--run", "{run}"]
ANALOGY = ["analogy", "chip", "intel", "bank", "--run", "{run}"]

# (case, damage, command, fragment of the one line)
DAMAGED_FILES = [
    ("config.json: an array", _edit_json(runs.CONFIG, lambda c: [1, 2]), SIMILAR,
     "holds a JSON array, not an object"),
    ("config.json: a string size", _edit_json(runs.CONFIG, lambda c: c.update(embed_size="16")),
     RESUME, "embed_size is '16', not a int"),
    ("config.json: a negative size", _edit_json(runs.CONFIG, lambda c: c.update(epochs=-1)),
     EVALUATE, "--epochs must be a positive integer"),
    ("config.json: NaN", _edit_text(runs.CONFIG, lambda t: re.sub(r'"lr": [^,}]+', '"lr": NaN',
                                                                 t)), ANALOGY,
     "is not valid JSON"),
    ("vocab.tsv: a count in superscript", _edit_text(runs.VOCAB, lambda t: re.sub(
        r"\t\d+\n", "\t\u00b2\n", t, count=1)), SIMILAR, ":1: expected token<TAB>count"),
    ("vocab.tsv: an absurd count", _edit_text(runs.VOCAB, lambda t: re.sub(
        r"\t\d+\n", "\t" + "9" * 30 + "\n", t, count=1)), RESUME, ":1: expected token<TAB>count"),
    ("vectors.txt: truncated", _edit_text(runs.VECTORS, lambda t: t[:len(t) // 2]), EVALUATE,
     "vectors.txt is damaged"),
    ("vectors.txt: empty", _edit_text(runs.VECTORS, lambda t: ""), ANALOGY,
     "does not start with a word2vec header"),
    ("vectors.txt: binary", lambda run: (run / runs.VECTORS).write_bytes(bytes(range(256)) * 4),
     EVALUATE, "does not start with a word2vec header"),
    ("vectors.txt: plain text", _edit_text(runs.VECTORS, lambda t: "the quick brown fox\n" * 9),
     ANALOGY, "does not start with a word2vec header"),
    ("vectors.txt: a huge header", _edit_text(runs.VECTORS, lambda t: re.sub(
        r"^\d+", "99999999999", t)), EVALUATE, "more than its"),
    ("vectors.txt: lacks a vocabulary word", _drop_vector("bank"), ANALOGY,
     "lacks 1 word(s) of the run's vocabulary (such as 'bank')"),
    ("vectors.txt: another dimension", _edit_text(runs.VECTORS, lambda t: re.sub(
        r"^(\d+) 16", r"\1 8", t)), EVALUATE, "8-dimensional vectors"),
    ("vectors.txt: not finite", _edit_text(runs.VECTORS, lambda t: re.sub(
        r"(\nchip) (\S+)", r"\1 nan", t)), ANALOGY, "not finite"),
    ("vectors.txt: a zero vector", _edit_text(runs.VECTORS, lambda t: re.sub(
        r"\nbank [^\n]+", "\nbank " + " ".join(["0"] * 16), t)), ANALOGY,
     "holds a zero vector (for 'bank')"),
    ("checkpoint: position past the epochs", lambda run: _position(run, epoch=5), RESUME,
     "its position is in epoch 6 but 1 epochs are reported"),
    ("checkpoint: batch past the epoch", lambda run: _rewrite_checkpoint(
        run, training=dict(runs.load_checkpoint(run).training, epochs=[],
                            position=dict(runs.load_checkpoint(run).position, epoch=0,
                                          batch=999))),
     RESUME, "stopped after batch 999 of epoch 1, which has 50 batches"),
    ("checkpoint: training not an object", lambda run: _rewrite_checkpoint(run, training=[3]),
     SIMILAR, "its training state is not an object"),
    ("checkpoint: negative Adam step", lambda run: _rewrite_checkpoint(run, adam_step=-3),
     RESUME, "its Adam step is -3"),
    ("checkpoint: a 3-D table", lambda run: _rewrite_checkpoint(
        run, center=runs.load_checkpoint(run).center[:, :, None]), SIMILAR,
     "not two float32 (V, E) arrays and four moments"),
    ("checkpoint: an absurd array header", _absurd_npz_header, RESUME,
     "is corrupt or truncated"),
    ("checkpoint: a format version of 7", lambda run: _rewrite_checkpoint_format(run, 7),
     SIMILAR, "has format 7, newer than"),
]


def _rewrite_checkpoint_format(run: Path, version: int) -> None:
    with np.load(run / runs.CHECKPOINT) as stored:
        entries = {name: stored[name] for name in stored.files}
    entries["format"] = np.int64(version)
    with open(run / runs.CHECKPOINT, "wb") as handle:
        np.savez(handle, **entries)


@pytest.mark.parametrize("case, damage, command, fragment", DAMAGED_FILES,
                         ids=[case[0] for case in DAMAGED_FILES])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, capsys, world, case, damage, command,
                                              fragment):
    run = _copy(world["run"], tmp_path / "run")
    damage(run)
    before = _snapshot(run)
    code, _, err = _run(capsys, [part.format(run=run) for part in command])
    line = _error_line(err)
    assert code in (1, 2) and fragment in line, line
    assert str(run) in line  # names the file
    assert _snapshot(run) == before  # and leaves it alone


def test_a_resume_of_a_finished_run_without_vectors_says_what_it_does(tmp_path, capsys, world):
    run = _copy(world["run"], tmp_path / "run")
    (run / runs.VECTORS).unlink()
    code, out, err = _run(capsys, ["train", "--resume", str(run), "--no-progress", "--query"])
    assert code == 0, err
    assert "after all 1 epochs, to export its vectors" in out and "epoch 2 of 1" not in out


def test_a_sweep_whose_last_row_was_cut_trains_that_point_again(tmp_path, capsys, world):
    sweep = _copy(world["sweep"], tmp_path / "sweep")
    rows = (sweep / "sweep.jsonl").read_text()
    (sweep / "sweep.jsonl").write_text(rows[:len(rows) - 40])  # killed while writing row 2
    code, out, err = _run(capsys, _sweep_args(world["corpus"], sweep))
    assert code == 0, err
    assert "(1 already done;" in out and "[2/2] lr=0.01" in out
    assert [json.loads(line)["point"] for line in (sweep / "sweep.jsonl").read_text()
            .splitlines()] == ["lr=0.002", "lr=0.01"]


def test_a_sweep_with_a_damaged_middle_row_is_one_line(tmp_path, capsys, world):
    sweep = _copy(world["sweep"], tmp_path / "sweep")
    lines = (sweep / "sweep.jsonl").read_text().splitlines()
    (sweep / "sweep.jsonl").write_text("\n".join(["[1, 2]", *lines[1:]]) + "\n")
    code, _, err = _run(capsys, _sweep_args(world["corpus"], sweep))
    assert code == 1 and "sweep.jsonl:1 is not a JSON object" in _error_line(err)


@pytest.mark.parametrize("loader, name, damage, fragment", [
    (runs.load_report, runs.REPORT, "[]", "holds a JSON array"),
    (runs.load_report, runs.REPORT, '{"seconds": "x"}', "is missing or not a number"),
    (runs.load_metrics, runs.METRICS, '{"epoch": 1, "loss": 0.5}\n[3]\n{"epoch": 2}\n',
     ":2 is not a JSON object"),
    (runs.load_evaluation, runs.EVALUATION, '{"wordsim353": {"spearman": "high"}}',
     "is not an object of numbers"),
    (runs.load_config, runs.CONFIG, '{"embed_size": 1e400}', "not a int"),
])
def test_the_run_files_that_only_benchmarks_read_are_validated(tmp_path, world, loader, name,
                                                                damage, fragment):
    from common.errors import DataError

    run = _copy(world["run"], tmp_path / "run")
    assert loader(run)  # the files as training wrote them are valid
    (run / name).write_text(damage)
    with pytest.raises(DataError, match=re.escape(fragment)) as error:
        loader(run)
    assert str(run / name) in str(error.value) and "\n" not in str(error.value)


def test_a_metrics_file_cut_by_a_kill_loses_only_its_last_line(tmp_path, world):
    run = _copy(world["run"], tmp_path / "run")
    text = (run / runs.METRICS).read_text()
    (run / runs.METRICS).write_text(text[:-20])
    assert len(runs.load_metrics(run)) == text.count("\n") - 1


@pytest.mark.parametrize("kind, text, fragment", [
    ("--pairs", None, "does not exist"),
    ("--pairs", b"\xff\xfe\x00", "is not UTF-8"),
    ("--pairs", b"# only a comment\n", "holds no entries"),
    ("--pairs", b"chip\tintel\n", ":1: expected WORD<TAB>WORD<TAB>SCORE"),
    ("--pairs", b"chip\tintel\tnan\n", ":1: expected WORD<TAB>WORD<TAB>SCORE"),
    ("--analogies", b"chip intel bank money\n", ":1: expected a `: section` line"),
    ("--analogies", b": topic\nchip intel bank\n", ":2: expected `: section` or four words"),
])
def test_a_bad_evaluation_file_of_ones_own_is_one_line(tmp_path, capsys, world, kind, text,
                                                       fragment):
    path = tmp_path / "mine.txt"
    if text is not None:
        path.write_bytes(text)
    code, out, err = _run(capsys, ["evaluate", "--run", str(world["run"]), kind, str(path)])
    line = _error_line(err)
    assert code == 1 and fragment in line and str(path) in line, line
    assert out == ""  # checked before anything is scored


def test_evaluation_files_of_ones_own_are_scored(tmp_path, capsys, world):
    pairs = tmp_path / "topics.tsv"
    pairs.write_text("# mine\nchip\tintel\t9.0\nchip\tbank\t1.0\nmoney\tloan\t8.5\n"
                     "vote\tchip\t0.5\n")
    questions = tmp_path / "topics-analogies.txt"
    questions.write_text(": topics\nchip intel bank money\nbank money vote senate\n")
    code, out, err = _run(capsys, ["evaluate", "--run", str(world["run"]), "--pairs", str(pairs),
                                   "--analogies", str(questions), "--json"])
    assert code == 0, err
    results = _strict(out)
    assert results["topics.tsv"]["covered"] == 4 and results["topics.tsv"]["total"] == 4
    assert -1 <= results["topics.tsv"]["spearman"] <= 1
    assert results["topics-analogies.txt"]["covered"] == 2


# -- 3b. Hypothesis: mutations of each file through every command that reads it ---------------

MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("json"), st.sampled_from(["[]", '"text"', "3", "null", "true",
                                                '{"a": 1}', "[" * 5000])),
    st.tuples(st.just("absurd"), st.sampled_from([b"99999999999999999999", b"-1", b"0",
                                                  b"1e308", b"NaN"])),
    st.tuples(st.just("append"), st.binary(max_size=24)),
)


def _mutate(data: bytes, mutation: tuple) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return data[:int(len(data) * mutation[1])]
    if kind == "flip":
        if not data:
            return data
        position = min(int(len(data) * mutation[1]), len(data) - 1)
        return data[:position] + bytes([data[position] ^ mutation[2]]) + data[position + 1:]
    if kind == "empty":
        return b""
    if kind == "json":
        return mutation[1].encode()
    if kind == "absurd":  # the first number in the file: a count, a header, a size
        return re.sub(rb"\d+", lambda match: mutation[1], data, count=1)
    return data + mutation[1]


# Every command that reads each file, with the number of examples it gets (resume and sweep
# train when the mutation leaves the file valid: fewer of them keep the table near a minute).
READERS = [
    (runs.CONFIG, "similar", 30), (runs.CONFIG, "analogy", 30), (runs.CONFIG, "evaluate", 30),
    (runs.CONFIG, "resume", 20),
    (runs.VOCAB, "similar", 30), (runs.VOCAB, "analogy", 30), (runs.VOCAB, "evaluate", 30),
    (runs.VOCAB, "resume", 20),
    (runs.VECTORS, "analogy", 40), (runs.VECTORS, "evaluate", 40),
    (runs.CHECKPOINT, "similar", 40), (runs.CHECKPOINT, "resume", 25),
    ("sweep.jsonl", "sweep", 15), ("pairs.tsv", "evaluate --pairs", 40),
    ("questions.txt", "evaluate --analogies", 40),
]
# `W2V_FUZZ_SCALE=10` tries ten times as many mutations (by hand, before a release).
FUZZ_SCALE = max(1, int(os.environ.get("W2V_FUZZ_SCALE", "1") or 1))
USER_FILES = {"pairs.tsv": "# Word 1\tWord 2\tHuman\nchip\tintel\t9.0\nbank\tloan\t8.0\n"
                           "vote\tchip\t0.5\n",
              "questions.txt": ": topics\nchip intel bank money\nbank money vote senate\n"}
COMMANDS = {"similar": SIMILAR, "evaluate": EVALUATE, "analogy": ANALOGY, "resume": RESUME}


@pytest.mark.parametrize("name, command, examples", READERS,
                         ids=[f"{name}-{command}" for name, command, _ in READERS])
def test_any_mutation_ends_in_an_answer_or_one_line(tmp_path, capsys, world, name, command,
                                                    examples):
    @settings(max_examples=examples * FUZZ_SCALE, deadline=None, derandomize=FUZZ_SCALE == 1, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(mutation=MUTATIONS)
    @example(mutation=("flip", 0.955078125, 64))  # once a zip "version needed" of 10.9
    def check(mutation: tuple) -> None:
        scratch = Path(tempfile.mkdtemp(dir=tmp_path))
        if command == "sweep":
            folder = _copy(world["sweep"], scratch / "sweep")
            args = _sweep_args(world["corpus"], folder)
        elif command.startswith("evaluate --"):  # a user's own file: next to the run
            folder = scratch
            (folder / name).write_text(USER_FILES[name])
            args = ["evaluate", "--run", str(world["run"]), command.split()[1],
                    str(folder / name)]
        else:
            folder = _copy(world["run"], scratch / "run")
            args = [part.format(run=folder) for part in COMMANDS[command]]
        target = folder / name
        target.write_bytes(_mutate(target.read_bytes(), mutation))
        code, out, err = _run(capsys, args)  # an exception here is a traceback: a failure
        if code == 0:
            if command in ("similar", "analogy"):
                assert out.splitlines() and all(line.startswith("cosine sim=")
                                                for line in out.splitlines()), out
            elif command.startswith("evaluate"):
                assert "wordsim353: Spearman rho" in out
            elif command == "resume":
                assert (folder / runs.VECTORS).is_file()
                assert len(runs.load_checkpoint(folder).training["epochs"]) == 2
            else:
                assert len((folder / "sweep.jsonl").read_text().splitlines()) == 2
        else:
            line = _error_line(err)
            assert code in (1, 2), (code, line)
        shutil.rmtree(scratch)

    check()


# -- 4. filesystem and process edges -----------------------------------------------------------

def test_a_pipe_as_corpus_or_data_is_refused_before_reading(tmp_path, capsys, world):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for flags in (["--corpus", str(pipe)], ["--corpus", "ptb", "--data", str(pipe)]):
        code, _, err = _run(capsys, ["train", *TINY, *flags, "--out", str(tmp_path / "r")])
        assert code == 1 and "is not a regular file (a pipe, device or socket)" in \
            _error_line(err)


def _refuse_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder, as root (who may write anywhere) cannot make one."""
    import errno

    def denied(*args, **kwargs):  # noqa: ANN002, ANN003
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("common.io.tempfile.mkstemp", denied)
    monkeypatch.setattr("common.runs.Path.unlink", denied)


@pytest.mark.parametrize("command", ["overwrite", "resume", "evaluate"])
def test_a_read_only_folder_is_one_line_or_still_answers(tmp_path, capsys, monkeypatch, world,
                                                         command):
    run = _copy(world["run"], tmp_path / "run")
    before = _snapshot(run)
    _refuse_writes(monkeypatch)
    if command == "evaluate":  # the scores come first, then a note that they were not saved
        code, out, err = _run(capsys, ["evaluate", "--run", str(run)])
        assert code == 0 and "wordsim353: Spearman rho" in out
        assert "not saved" in err and "Permission denied" in err
    else:
        args = _train(world["corpus"], run, "--overwrite") if command == "overwrite" else \
            ["train", "--resume", str(run), "--epochs", "2", "--no-progress"]
        code, _, err = _run(capsys, args)
        assert code == 1 and "Permission denied" in _error_line(err)
    monkeypatch.undo()
    assert {k: v for k, v in _snapshot(run).items() if k != runs.CONFIG} == \
        {k: v for k, v in before.items() if k != runs.CONFIG}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_really_read_only_folder_still_evaluates(tmp_path, capsys, world):
    run = _copy(world["run"], tmp_path / "run")
    run.chmod(0o555)
    try:
        code, out, err = _run(capsys, ["evaluate", "--run", str(run)])
        assert code == 0 and "wordsim353" in out and "not saved" in err
    finally:
        run.chmod(0o755)


@pytest.mark.parametrize("mask, mode", [(0o027, 0o640), (0o002, 0o664)])
def test_run_files_follow_the_umask(tmp_path, capsys, world, mask, mode):
    previous = os.umask(mask)
    try:
        code, _, err = _run(capsys, _train(world["corpus"], tmp_path / "run"))
    finally:
        os.umask(previous)
    assert code == 0, err
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in (tmp_path / "run").iterdir()} \
        == {name: oct(mode) for name in runs.RUN_FILES}


@pytest.mark.parametrize("command", ["resume", "overwrite"])
def test_temporaries_of_a_killed_process_are_removed_and_nothing_else(tmp_path, capsys, world,
                                                                      command):
    run = _copy(world["run"], tmp_path / "run")
    ours = [".loss.png.k2j4_x.png.tmp", ".checkpoint.npz.abc123.npz.tmp",
            ".vectors.txt.q9z.tmp"]
    theirs = ["notes.tmp", ".loss.png.keep", ".other.txt.abc.tmp", "my.vectors.txt.1.tmp"]
    for name in ours + theirs:
        (run / name).write_bytes(b"")
    args = ["train", "--resume", str(run), "--epochs", "2", "--no-progress", "--query"] \
        if command == "resume" else _train(world["corpus"], run, "--overwrite")
    code, _, err = _run(capsys, args)
    assert code == 0, err
    left = {path.name for path in run.iterdir()}
    assert not left & set(ours) and set(theirs) <= left


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_empty_out_is_a_usage_error(tmp_path, capsys, world, command):
    args = _train(world["corpus"], Path("x")) if command == "train" else \
        _sweep_args(world["corpus"], Path("x"))
    args[args.index("--out") + 1] = ""
    code, _, err = _run(capsys, args)
    assert code == 2 and "--out is empty" in _error_line(err)
    assert not Path("runs").exists() or not any(Path("runs").glob("numpy*"))


def test_a_file_as_run_says_it_is_a_file(capsys, world):
    for args in (["similar", "chip", "--run", str(world["corpus"])],
                 ["train", "--resume", str(world["corpus"])]):
        code, _, err = _run(capsys, args)
        assert code == 2 and "is a file, not a run folder" in _error_line(err)


def _signal_during(monkeypatch: pytest.MonkeyPatch, target: str, signum: int) -> None:
    """Make `target` (module.attribute) send `signum` to this process when it is called."""
    module, attribute = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[attribute]), attribute)

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, wrapped)


@pytest.mark.parametrize("where, target, signum", [
    ("reading the corpus", "common.data.load_encoded", signal.SIGHUP),
    ("reading the corpus", "common.data.load_encoded", signal.SIGTERM),
    ("exporting", "common.embeddings.export_word2vec", signal.SIGTERM),
    ("exporting", "common.embeddings.export_word2vec", signal.SIGINT),
    ("evaluating", "common.evaluate.evaluate", signal.SIGHUP),
])
def test_a_signal_at_any_point_is_one_line(tmp_path, capsys, monkeypatch, world, where, target,
                                           signum):
    _signal_during(monkeypatch, target, signum)
    code, _, err = _run(capsys, _train(world["corpus"], tmp_path / "run"))
    line = _error_line(err)
    assert code == 128 + signum, (where, line)
    assert "files already written are complete" in line


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_while_training_checkpoints_and_says_how_to_resume(tmp_path, capsys,
                                                                    monkeypatch, world, signum):
    monkeypatch.setenv("W2V_INTERRUPT_AFTER_BATCHES", "20")
    monkeypatch.setenv("W2V_INTERRUPT_SIGNAL", signal.Signals(signum).name)
    run = tmp_path / "run"
    code, _, err = _run(capsys, _train(world["corpus"], run))
    assert code == 128 + signum
    assert f"continue with `w2v train --resume {run}`" in _error_line(err)
    assert runs.load_checkpoint(run).position["batch"] == 20


def test_an_ignored_hangup_stays_ignored(tmp_path, capsys, monkeypatch, world):
    """`nohup w2v train ...` outlives its terminal: SIGHUP, ignored by nohup, changes nothing."""
    monkeypatch.setenv("W2V_INTERRUPT_AFTER_BATCHES", "20")
    monkeypatch.setenv("W2V_INTERRUPT_SIGNAL", "SIGHUP")
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code, out, err = _run(capsys, _train(world["corpus"], tmp_path / "run"))
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert code == 0, err
    assert "run folder:" in out


def test_signal_handlers_are_restored_after_each_command(capsys, world):
    before = {signum: signal.getsignal(signum)
              for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    _run(capsys, ["similar", "chip", "--run", str(world["run"])])
    assert {signum: signal.getsignal(signum) for signum in before} == before


# -- 5. strict JSON ----------------------------------------------------------------------------

def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_file_and_json_output_is_strict(capsys, world):
    """The tiny vocabulary covers too few pairs for a correlation: null, never NaN."""
    code, out, _ = _run(capsys, ["evaluate", "--run", str(world["run"]), "--json"])
    assert code == 0
    printed = _strict(out)
    assert printed["simlex999"]["spearman"] is None
    for name in (runs.CONFIG, runs.REPORT, runs.EVALUATION):
        _strict((world["run"] / name).read_text())
    assert _strict((world["run"] / runs.EVALUATION).read_text()) == printed
    for line in (world["run"] / runs.METRICS).read_text().splitlines():
        _strict(line)
    rows = [_strict(line) for line in (world["sweep"] / "sweep.jsonl").read_text().splitlines()]
    assert any(row["wordsim353"] is None or math.isfinite(row["wordsim353"]) for row in rows)
    _strict((world["sweep"] / "sweep.json").read_text())
