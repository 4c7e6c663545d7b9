"""text8 as a named corpus and the token cache, on small files made here (nothing downloads).

The files stand in for text8 by patching its checksum (and, to stay small, the held-out size),
so every path of the real one is exercised: the file or its zip, --data / W2V_TEXT8 / the
cache's text8.zip, 1,000-token sentences, the held-out tail, the memory-mapped token cache
and its failures.
"""
from __future__ import annotations

import errno
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common import corpus, token_cache
from common.cli import main
from common.config import TrainConfig
from common.data import prepare_training_data
from common.errors import ChecksumError, DataError

HELDOUT = 2_000
WORDS = ["anarchism", "originated", "as", "a", "term", "of", "abuse", "first", "used",
         "against", "early", "working", "class", "radicals", "including", "the", "diggers"]


def make_text8(folder: Path, tokens: int = 12_345, seed: int = 0) -> Path:
    """One line of `tokens` words, no newline, as text8 is."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)[rng.zipf(1.5, size=tokens) % len(WORDS)]
    path = folder / "text8"
    path.write_bytes((" " + " ".join(words.tolist())).encode())  # text8 starts with a space
    return path


@pytest.fixture
def text8(tmp_path, monkeypatch) -> Path:
    """A small text8 whose checksum is the one expected; held-out tail of 2,000 tokens."""
    path = make_text8(tmp_path)
    monkeypatch.setattr(corpus, "TEXT8_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr("common.data.TEXT8_HELDOUT_TOKENS", HELDOUT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(corpus.ENV_TEXT8, raising=False)
    monkeypatch.setenv(corpus.ENV_TEXT8_URL, "http://127.0.0.1:9/text8.zip")  # refused
    return path


def zipped(path: Path, destination: Path) -> Path:
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, "text8")
    return destination


def config(**values: object) -> TrainConfig:
    settings = dict(corpus="text8", min_freq=1, batch_size=64, embed_size=8, epochs=1,
                    backend="numpy", subsample_t=1e-3)
    settings.update(values)
    return TrainConfig(**settings)


def token_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "xdg" / "w2v-multi" / "tokens").glob("*"))


def test_text8_is_cut_into_1000_token_sentences_with_the_tail_held_out(text8, tmp_path):
    data = prepare_training_data(config(data=str(text8)), log=lambda line: None)
    words = text8.read_text().split()
    train_tokens = len(words) - HELDOUT
    lengths = np.diff(data.epochs.corpus.offsets)
    assert lengths.tolist() == [1000] * (train_tokens // 1000) + [train_tokens % 1000]
    assert np.diff(data.valid.offsets).tolist() == [1000, 1000]
    ids = [data.vocab[word] for word in words]
    assert np.array_equal(data.epochs.corpus.tokens, ids[:train_tokens])
    assert np.array_equal(data.valid.tokens, ids[train_tokens:])
    # The vocabulary counts the training tokens only; the held-out ones are not seen.
    assert int(data.vocab.counts.sum()) == train_tokens
    assert isinstance(data.epochs.corpus.tokens, np.memmap)  # read from the token cache
    assert data.corpus_name == "text8" and data.num_sentences == len(lengths)


def test_train_on_text8_from_a_local_copy_then_from_the_cache(text8, tmp_path, capsys):
    zip_path = zipped(text8, tmp_path / "text8.zip")
    run = tmp_path / "run"
    args = ["train", "--corpus", "text8", "--backend", "numpy", "--epochs", "1",
            "--min-freq", "1", "--batch-size", "64", "--embed-size", "8", "--no-progress",
            "--query", "--out", str(run)]
    assert main(args + ["--data", str(zip_path)]) == 0
    out = capsys.readouterr().out
    assert "building the token cache" in out and "validation loss" in out
    assert json.loads((run / "report.json").read_text())["corpus"] == "text8"
    # The zip moved into the cache: found there with no --data and no W2V_TEXT8.
    cached = tmp_path / "xdg" / "w2v-multi" / "text8.zip"
    zip_path.rename(cached)
    assert main(args + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "building the token cache" not in out  # the tokens too came from the cache
    report = json.loads((run / "report.json").read_text())
    assert report["valid_losses"] and len(token_files(tmp_path)) == 1


def test_text8_from_the_environment_and_wrong_copies(text8, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(corpus.ENV_TEXT8, str(text8))
    assert corpus.text8_source().source == str(text8)
    (tmp_path / "other").mkdir()
    other = make_text8(tmp_path / "other", seed=1)
    with pytest.raises(ChecksumError, match="expected .* text8"):
        corpus.text8_source(str(other))
    monkeypatch.delenv(corpus.ENV_TEXT8)
    code = main(["train", "--corpus", "text8", "--data", str(other), "--backend", "numpy",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "sha256" in err[0]
    not_text8 = zipfile.ZipFile(tmp_path / "bad.zip", "w")
    not_text8.writestr("readme", "x")
    not_text8.close()
    with pytest.raises(DataError, match="holds no text8"):
        corpus.text8_source(str(tmp_path / "bad.zip"))
    # Nothing local and no network: one line that says how to give a copy.
    with pytest.raises(DataError, match="W2V_TEXT8"):
        corpus.text8_source()


# -- the token cache -----------------------------------------------------------------------------


def test_a_changed_corpus_or_another_vocabulary_gets_its_own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    text = tmp_path / "corpus.txt"
    text.write_text("a b c a b\nc a b a\n")
    first = prepare_training_data(TrainConfig(corpus=str(text), min_freq=1, batch_size=2,
                                              subsample_t=1.0), log=lambda line: None)
    assert first.epochs.corpus.tokens.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    text.write_text("a b c a b\nc a b a d d d d\n")  # changed: another key, rebuilt
    second = prepare_training_data(TrainConfig(corpus=str(text), min_freq=1, batch_size=2,
                                               subsample_t=1.0), log=lambda line: None)
    assert second.vocab["d"] > 0 and len(second.epochs.corpus.tokens) == 13
    third = prepare_training_data(TrainConfig(corpus=str(text), min_freq=4, batch_size=2,
                                              subsample_t=1.0), log=lambda line: None)
    assert third.vocab["c"] == 0 and len(token_files(tmp_path)) == 3


@pytest.mark.parametrize("damage", ["truncate", "header", "tokens"])
def test_a_damaged_cache_file_is_rebuilt_never_used(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    text = tmp_path / "corpus.txt"
    text.write_text("a b c a b\nc a b a\n" * 20)
    settings = TrainConfig(corpus=str(text), min_freq=1, batch_size=2, subsample_t=1.0)
    good = prepare_training_data(settings, log=lambda line: None)
    expected = np.array(good.epochs.corpus.tokens)
    [path] = token_files(tmp_path)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-5]
    elif damage == "header":  # another vocabulary under the same name
        raw = raw.replace(b'"min_freq": 1', b'"min_freq": 2')
    else:  # a word id outside the vocabulary
        raw[-8 * 41 - 4:-8 * 41] = np.int32(99).tobytes()
    path.write_bytes(bytes(raw))
    lines: list[str] = []
    again = prepare_training_data(settings, log=lines.append)
    assert any("unusable" in line and "rebuilding" in line for line in lines), lines
    assert np.array_equal(again.epochs.corpus.tokens, expected)


def test_a_cache_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, monkeypatch,
                                                                       capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("a b c a b\nc a b a\n")
    blocked = tmp_path / "xdg-file"
    blocked.write_text("not a folder")  # the cache folder cannot be made under a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    code = main(["train", "--corpus", str(text), "--min-freq", "1", "--batch-size", "2",
                 "--backend", "numpy", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot write the token cache" in err[0], err
    # A full disk while writing: one line, and no file, whole or partial, is left.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_cache.os, "fsync", full)
    code = main(["train", "--corpus", str(text), "--min-freq", "1", "--batch-size", "2",
                 "--backend", "numpy", "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert token_files(tmp_path) == []


@pytest.mark.parametrize("stage", ["count_vocab", "encode"])
def test_ctrl_c_during_the_vocabulary_pass_or_the_cache_build_leaves_no_cache(
        tmp_path, monkeypatch, stage):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    text = tmp_path / "corpus.txt"
    text.write_text("a b c a b\nc a b a\n" * 10)
    calls = {"pieces": 0}
    real_pieces = token_cache.sentence_pieces

    def interrupted(*args, **kwargs):
        # The vocabulary pass is the first pass over the text, the encoding the second.
        calls["pieces"] += 1
        for number, piece in enumerate(real_pieces(*args, **kwargs)):
            if calls["pieces"] == (1 if stage == "count_vocab" else 2) and number == 0:
                raise KeyboardInterrupt
            yield piece

    monkeypatch.setattr(token_cache, "sentence_pieces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_training_data(TrainConfig(corpus=str(text), min_freq=1, batch_size=2,
                                          subsample_t=1.0),
                              log=lambda line: None)
    assert token_files(tmp_path) == []
    monkeypatch.setattr(token_cache, "sentence_pieces", real_pieces)
    data = prepare_training_data(TrainConfig(corpus=str(text), min_freq=1, batch_size=2,
                                          subsample_t=1.0),
                                 log=lambda line: None)
    assert len(data.epochs.corpus.tokens) == 90 and len(token_files(tmp_path)) == 1


def test_streamed_text_file_equals_the_whole_file_reader(tmp_path, monkeypatch):
    """Chunk boundaries inside words and lines change nothing (4-byte chunks)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(token_cache, "_CHUNK", 4)
    text = tmp_path / "corpus.txt"
    text.write_text("\ufeffthe café  is\n\n  open\tlate tonight\nthe end\n", encoding="utf-8")
    data = prepare_training_data(TrainConfig(corpus=str(text), min_freq=1, batch_size=2,
                                             subsample_t=1.0), log=lambda line: None)
    sentences = corpus.read_text(text).sentences
    assert data.epochs.corpus.to_lists() == data.vocab.encode(sentences).to_lists()
    assert data.vocab.idx_to_token[1] == "the" and "café" in data.vocab.token_to_idx


def test_text8_downloads_into_the_cache_verified_and_never_half(text8, tmp_path, monkeypatch):
    """A local server stands in for mattmahoney.net: the good zip lands in the cache whole;
    a zip of other text is refused and leaves nothing behind."""
    import http.server
    import threading

    payloads = {"/text8.zip": zipped(text8, tmp_path / "good.zip").read_bytes()}
    other = tmp_path / "other"
    other.mkdir()
    payloads["/other.zip"] = zipped(make_text8(other, seed=2), tmp_path / "bad.zip").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = payloads.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "*")
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    cache = tmp_path / "xdg" / "w2v-multi"
    try:
        monkeypatch.setenv(corpus.ENV_TEXT8_URL, f"{url}/other.zip")
        with pytest.raises(ChecksumError, match="sha256"):
            corpus.text8_source(log=lambda line: None)
        assert not list(cache.glob("*text8*"))  # neither the zip nor a partial download
        monkeypatch.setenv(corpus.ENV_TEXT8_URL, f"{url}/text8.zip")
        source = corpus.text8_source(log=lambda line: None)
        assert source.source == f"{cache / 'text8.zip'}:text8"
        assert sorted(p.name for p in cache.iterdir()) == ["text8.zip"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
