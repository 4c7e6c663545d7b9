"""Vocabulary and encoding: the chapter's PTB figures, `<unk>` = 0, ordering, save/load."""
from __future__ import annotations

import os

import numpy as np
import pytest

from common.errors import DataError
from common.vocab import UNK, EncodedCorpus, Vocab

SENTENCES = [["b", "a", "c", "a"], ["c", "b", "d", "<unk>"], [], ["a", "e", "b", "c"]]


@pytest.fixture(scope="module")
def ptb_sentences(ptb_data) -> list[list[str]]:
    from common.corpus import read_ptb

    return read_ptb(ptb_data).sentences


def test_ptb_has_the_chapters_sentences_and_vocabulary(ptb_sentences):
    vocab = Vocab(ptb_sentences, min_freq=10)
    assert len(ptb_sentences) == 42069
    assert len(vocab) == 6719
    assert vocab.idx_to_token[:4] == [UNK, "the", "N", "of"]
    assert vocab.counts[vocab["the"]] == 50770
    assert vocab.counts[vocab["join"]] == 45
    # Every token is counted once: kept words plus <unk> (PTB's own and the rare words).
    assert vocab.counts.sum() == sum(map(len, ptb_sentences)) == 887521
    assert vocab.counts[0] == 67465
    assert vocab.counts[1:].min() >= 10
    corpus = vocab.encode(ptb_sentences)
    assert corpus.tokens.dtype == np.int32 and corpus.offsets.dtype == np.int64
    assert len(corpus.offsets) == 42069 + 1 and corpus.offsets[-1] == 887521
    assert np.array_equal(np.bincount(corpus.tokens, minlength=len(vocab)), vocab.counts)


def test_unk_is_index_zero_and_collects_rare_words_and_literal_unk():
    vocab = Vocab(SENTENCES, min_freq=2)
    # a, b, c appear 3 times (ties alphabetical); d, e once; "<unk>" once.
    assert vocab.idx_to_token == [UNK, "a", "b", "c"]
    assert vocab.counts.tolist() == [3, 3, 3, 3]
    assert vocab.counts.dtype == np.int64
    assert vocab.unk == 0 and vocab[UNK] == 0


def test_order_is_descending_count_then_alphabetical():
    vocab = Vocab([["z", "y", "y", "x", "x", "w", "w", "w"]], min_freq=1)
    assert vocab.idx_to_token == [UNK, "w", "x", "y", "z"]
    assert vocab.counts.tolist() == [0, 3, 2, 2, 1]


def test_lookup_both_ways():
    vocab = Vocab(SENTENCES, min_freq=2)
    assert vocab["b"] == 2 and vocab["never seen"] == 0 and vocab["d"] == 0
    assert vocab[["a", "zzz", "c"]] == [1, 0, 3]
    assert vocab[("c",)] == [3]
    assert vocab.to_tokens(2) == "b"
    assert vocab.to_tokens(np.int64(3)) == "c"
    assert vocab.to_tokens([0, 1]) == [UNK, "a"]
    assert vocab.to_tokens(np.array([3, 2])) == ["c", "b"]
    assert vocab.token_to_idx == {UNK: 0, "a": 1, "b": 2, "c": 3}


def test_encode_is_flat_with_offsets():
    vocab = Vocab(SENTENCES, min_freq=2)
    corpus = vocab.encode(SENTENCES)
    assert corpus.to_lists() == [[2, 1, 3, 1], [3, 2, 0, 0], [], [1, 0, 2, 3]]
    assert corpus.offsets.tolist() == [0, 4, 8, 8, 12]
    assert corpus.lengths.tolist() == [4, 4, 0, 4]
    assert vocab.encode(iter([["a"], ["q", "b"]])).to_lists() == [[1], [0, 2]]
    empty = vocab.encode([])
    assert len(empty.tokens) == 0 and empty.offsets.tolist() == [0]


def test_encoded_corpus_from_ids():
    corpus = EncodedCorpus.from_ids([list(range(7)), list(range(7, 10))])
    assert corpus.tokens.tolist() == list(range(10)) and corpus.offsets.tolist() == [0, 7, 10]


def test_save_and_load_round_trip(tmp_path):
    vocab = Vocab(SENTENCES, min_freq=1)
    path = tmp_path / "vocab.tsv"
    vocab.save(path)
    assert path.read_text(encoding="utf-8").splitlines()[:3] == [f"{UNK}\t1", "a\t3", "b\t3"]
    assert os.listdir(tmp_path) == ["vocab.tsv"]  # no temporary left behind
    loaded = Vocab.load(path)
    assert loaded.idx_to_token == vocab.idx_to_token
    assert np.array_equal(loaded.counts, vocab.counts) and loaded.counts.dtype == np.int64
    assert loaded["e"] == vocab["e"]


@pytest.mark.parametrize("text, message", [
    (f"{UNK}\t3\na 2\n", ":2: expected token<TAB>count"),
    (f"{UNK}\t3\na\tmany\n", ":2: expected token<TAB>count"),
    ("a\t3\n", "must start with <unk>"),
    (f"{UNK}\t3\na\t2\na\t1\n", "some token twice"),
])
def test_load_rejects_malformed_files(tmp_path, text, message):
    path = tmp_path / "vocab.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        Vocab.load(path)
    assert "\n" not in str(error.value)


def test_load_of_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read vocabulary"):
        Vocab.load(tmp_path / "absent.tsv")
