"""The vocabulary (token <-> index, with counts) and the corpus encoded as one flat array.

As in d2l's `Vocab(sentences, min_freq=10)`: words seen fewer than `min_freq` times become
`<unk>`, and PTB's own literal `<unk>` merges with it. One deliberate fix: `<unk>` is index 0.
The chapter's text and its `get_negatives` (which draws from indices 1..V-1) assume that, but
d2l's `Vocab` sorts its tokens alphabetically, so there index 0 is whatever sorts first. The
other tokens follow by descending count, ties alphabetical, so the order is deterministic.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence, overload

import numpy as np

from common.errors import DataError
from common.io import write_text

UNK = "<unk>"
_COUNT = re.compile(r"[0-9]{1,19}")


class EncodedCorpus(NamedTuple):
    """Sentences of word indices, stored flat so sampling can be vectorised.

    Sentence `s` is `tokens[offsets[s]:offsets[s + 1]]`.
    """

    tokens: np.ndarray   # (T,) int32, all sentences concatenated
    offsets: np.ndarray  # (S + 1,) int64, offsets[0] == 0, offsets[-1] == T

    @classmethod
    def from_ids(cls, sentences: Iterable[Sequence[int]]) -> "EncodedCorpus":
        """Build from lists of indices (the chapter's tiny examples, tests)."""
        sentences = list(sentences)
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        tokens = np.fromiter(itertools.chain.from_iterable(sentences), dtype=np.int32,
                             count=int(lengths.sum()))
        return cls(tokens, _offsets(lengths))

    @property
    def lengths(self) -> np.ndarray:
        """(S,) int64: the length of every sentence."""
        return np.diff(self.offsets)

    def to_lists(self) -> list[list[int]]:
        """The sentences as lists of indices (for tests and small examples)."""
        return [self.tokens[start:end].tolist()
                for start, end in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _kept(counter: dict[str, int], min_freq: int) -> tuple[list[str], np.ndarray]:
    """Index order and counts: `<unk>` first (every rarer word), then by count, ties by token."""
    total = sum(counter.values())
    counter.pop(UNK, None)  # PTB writes <unk> itself; it is counted with the rare words
    kept = sorted(((token, count) for token, count in counter.items() if count >= min_freq),
                  key=lambda pair: (-pair[1], pair[0]))
    tokens = [UNK] + [token for token, _ in kept]
    counts = np.array([0] + [count for _, count in kept], dtype=np.int64)
    counts[0] = total - counts.sum()
    return tokens, counts


class Vocab:
    """Token <-> index for the words seen at least `min_freq` times; `<unk>` is index 0."""

    unk = 0

    def __init__(self, sentences: Iterable[Sequence[str]], min_freq: int = 10) -> None:
        # Counter's update runs in C, so counting PTB's 887k tokens takes tens of ms.
        counter = collections.Counter(itertools.chain.from_iterable(sentences))
        self._set(*_kept(counter, min_freq))

    @classmethod
    def from_counter(cls, counter: collections.Counter, min_freq: int = 10) -> "Vocab":
        """From token counts already made (a streaming pass over a large corpus)."""
        vocab = cls.__new__(cls)
        vocab._set(*_kept(dict(counter), min_freq))
        return vocab

    @classmethod
    def from_counts(cls, tokens: Sequence[str], counts: Sequence[int] | np.ndarray) -> "Vocab":
        """A vocabulary with exactly this index order (what `load` reads back)."""
        if not tokens or tokens[0] != UNK:
            raise DataError(f"a vocabulary must start with {UNK} at index 0")
        if len(tokens) != len(counts):
            raise DataError(f"{len(tokens)} tokens but {len(counts)} counts")
        vocab = cls.__new__(cls)
        vocab._set(list(tokens), np.asarray(counts, dtype=np.int64))
        return vocab

    def _set(self, tokens: list[str], counts: np.ndarray) -> None:
        self.idx_to_token: list[str] = tokens
        self.token_to_idx: dict[str, int] = {token: index for index, token in enumerate(tokens)}
        if len(self.token_to_idx) != len(tokens):
            raise DataError("a vocabulary lists some token twice")
        self.counts: np.ndarray = counts  # (V,) int64; counts[0] = occurrences of <unk>

    def __len__(self) -> int:
        return len(self.idx_to_token)

    @overload
    def __getitem__(self, tokens: str) -> int: ...
    @overload
    def __getitem__(self, tokens: list[str] | tuple[str, ...]) -> list[int]: ...

    def __getitem__(self, tokens):
        """Index of a token (0 when unknown), or a list of indices for a list of tokens."""
        if isinstance(tokens, (list, tuple)):
            return [self.token_to_idx.get(token, 0) for token in tokens]
        return self.token_to_idx.get(tokens, 0)

    def to_tokens(self, indices):
        """Token of an index, or a list of tokens for a list/array of indices."""
        if isinstance(indices, (list, tuple, np.ndarray)):
            return [self.idx_to_token[int(index)] for index in np.ravel(indices)]
        return self.idx_to_token[int(indices)]

    def encode(self, sentences: Iterable[Sequence[str]]) -> EncodedCorpus:
        """Map every token to its index in one C-level pass (`map(dict.get, ...)`)."""
        sentences = sentences if isinstance(sentences, list) else list(sentences)
        lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        lookup = map(self.token_to_idx.get, itertools.chain.from_iterable(sentences),
                     itertools.repeat(self.unk))
        tokens = np.fromiter(lookup, dtype=np.int32, count=int(lengths.sum()))
        return EncodedCorpus(tokens, _offsets(lengths))

    def digest(self) -> str:
        """sha256 of the tokens and counts in index order: a checkpoint's vocabulary id."""
        text = "".join(f"{token}\t{count}\n" for token, count in zip(self.idx_to_token,
                                                                    self.counts.tolist()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write `token<TAB>count`, one line per index, atomically."""
        lines = (f"{token}\t{count}\n" for token, count in zip(self.idx_to_token,
                                                                self.counts.tolist()))
        return write_text(path, "".join(lines))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """Read what `save` wrote; a malformed file raises `DataError` naming the line."""
        advice = "train the run again (or restore the file)"
        path = Path(path)
        try:
            if not path.is_file():
                what = "does not exist" if not path.exists() else "is not a regular file"
                raise DataError(f"cannot read vocabulary {path}: it {what}; {advice}")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"cannot read vocabulary {path} ({error}): {advice}") from None
        tokens, counts = [], []
        for number, line in enumerate(text.split("\n")[:-1] if text.endswith("\n")
                                      else text.split("\n"), start=1):
            token, separator, count = line.rpartition("\t")
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
            if not separator or token.split() != [token] or not _COUNT.fullmatch(count) \
                    or int(count) >= 1 << 62:
                shown = line if len(line) <= 60 else line[:57] + "..."
                raise DataError(f"{path}:{number}: expected token<TAB>count (a word without "
                                f"spaces, an integer count), got {shown!r}: {advice}")
            tokens.append(token)
            counts.append(int(count))
        try:
            vocab = cls.from_counts(tokens, counts)
        except DataError as error:
            raise DataError(f"{path}: {error}: {advice}") from None
        if len(vocab) < 2:
            raise DataError(f"vocabulary {path} holds no word besides {UNK}: {advice}")
        return vocab

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens, {int(self.counts.sum())} occurrences)"
