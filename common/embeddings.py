"""Using trained vectors: nearest neighbours, word2vec-format export through gensim."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.errors import UnknownWordError
from common.io import atomic_path


def lookup(words: Sequence[str], token_to_idx: dict[str, int]) -> np.ndarray:
    """Words -> ids; an unknown word is a one-line error suggesting near spellings."""
    ids = []
    for word in words:
        index = token_to_idx.get(word)
        if index is None or index == 0:  # id 0 is <unk>: no vector worth querying
            near = difflib.get_close_matches(word, [t for t in token_to_idx if t != "<unk>"],
                                             n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(near)}?" if near else \
                "; try a more frequent word (rare words fall below --min-freq)"
            raise UnknownWordError(f"{word!r} is not in the vocabulary{hint}")
        ids.append(index)
    return np.asarray(ids, dtype=np.int64)


def format_similar(tokens: Sequence[str], ids: np.ndarray, sims: np.ndarray) -> list[str]:
    """The chapter's lines: `cosine sim=0.784: microprocessor`."""
    return [f"cosine sim={float(sim):.3f}: {tokens[int(index)]}" for index, sim in zip(ids, sims)]


def to_keyed_vectors(tokens: Sequence[str], vectors: np.ndarray) -> Any:
    """Vectors (V, E) as gensim `KeyedVectors` in memory, `<unk>` left out.

    `<unk>` is not a word, and gensim's evaluators and readers would treat it as one. Rows
    keep the vocabulary's order (by count), which gensim's analogy evaluator relies on when
    it limits the search to the most frequent words.
    """
    from gensim.models import KeyedVectors

    keep = [i for i, token in enumerate(tokens) if token != "<unk>"]
    keyed = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    keyed.add_vectors([tokens[i] for i in keep], np.asarray(vectors)[keep].astype(np.float32))
    # gensim sorts by a "count" attribute when writing; the vocabulary order is by count.
    keyed.expandos["count"] = np.arange(len(keep), 0, -1, dtype=np.int64)
    return keyed


def export_word2vec(destination: str | Path, tokens: Sequence[str], vectors: np.ndarray,
                    *, binary: bool = False) -> Any:
    """Write vectors in word2vec format (text by default), atomically, via gensim.

    Returns the gensim `KeyedVectors` it wrote, so callers can evaluate without re-reading.
    """
    keyed = to_keyed_vectors(tokens, vectors)
    with atomic_path(destination) as temporary:
        keyed.save_word2vec_format(str(temporary), binary=binary)
    return keyed


def load_word2vec(path: str | Path, *, binary: bool = False) -> Any:
    """Load exported vectors as gensim `KeyedVectors` (for evaluation and the user's own use)."""
    from gensim.models import KeyedVectors

    return KeyedVectors.load_word2vec_format(str(path), binary=binary)
