"""Using trained vectors: nearest neighbours, word2vec-format export through gensim."""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.errors import DataError, UnknownWordError
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


def load_word2vec(path: str | Path, *, binary: bool = False, words: Sequence[str] = (),
                  dimension: int | None = None, advice: str = "export it again") -> Any:
    """Load exported vectors as gensim `KeyedVectors`, checked before and after gensim reads.

    The header must promise no more than the file can hold (gensim allocates what it
    promises), the vectors must be finite, of `dimension` when given, and hold every one of
    `words` (a run's vocabulary). Every failure is a one-line `DataError` naming the file.
    """
    from gensim.models import KeyedVectors

    path = Path(path)
    try:
        if not path.is_file():
            raise DataError(f"{path} is missing or not a regular file: {advice}")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.readline(256).decode("utf-8").split()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path} ({getattr(error, 'strerror', None) or error}): "
                        f"{advice}") from None
    if len(header) != 2 or not all(part.isascii() and part.isdigit() for part in header):
        raise DataError(f"{path} does not start with a word2vec header (`COUNT DIMENSION`): "
                        f"{advice}")
    count, size_per_vector = int(header[0]), int(header[1])
    # Each value takes at least 2 bytes in text ("0 "), 4 in binary: a header promising more
    # than the file can hold would make gensim allocate it first.
    smallest = count * size_per_vector * (4 if binary else 2)
    if count < 1 or size_per_vector < 1 or smallest > size:
        raise DataError(f"{path} has the header {count} x {size_per_vector}, more than its "
                        f"{size:,} bytes can hold: it is truncated or damaged; {advice}")
    if dimension is not None and size_per_vector != dimension:
        raise DataError(f"{path} holds {size_per_vector}-dimensional vectors, the run's "
                        f"config.json says {dimension}: {advice}")
    try:
        with warnings.catch_warnings():  # a value beyond float32 warns, then fails below
            warnings.simplefilter("ignore", RuntimeWarning)
            keyed = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    except (ValueError, UnicodeDecodeError, EOFError, KeyError, IndexError, OverflowError,
            MemoryError) as error:
        reason = " ".join(str(error).split())[:80] or type(error).__name__
        raise DataError(f"{path} is damaged ({reason}): {advice}") from None
    if not np.isfinite(keyed.vectors).all():
        raise DataError(f"{path} holds values that are not finite numbers: {advice}")
    zero = np.flatnonzero(~keyed.vectors.any(axis=1))
    if len(zero):  # no direction, no cosine: training never makes one
        raise DataError(f"{path} holds a zero vector (for {keyed.index_to_key[zero[0]]!r}): "
                        f"{advice}")
    missing = [word for word in words if word not in keyed.key_to_index]
    if missing:
        raise DataError(f"{path} lacks {len(missing)} word(s) of the run's vocabulary (such as "
                        f"{missing[0]!r}): {advice}")
    return keyed


PROJECTOR_VECTORS, PROJECTOR_METADATA = "vectors.tsv", "metadata.tsv"


def export_projector(folder: str | Path, tokens: Sequence[str], vectors: np.ndarray, *,
                     include_unk: bool = False) -> tuple[Path, Path]:
    """Write the Embedding Projector's pair into `folder`: `vectors.tsv` (one row of E
    tab-separated numbers per word) and `metadata.tsv` (the words, one per line, no header,
    in the same order), as TensorFlow's word2vec tutorial does. `<unk>` is left out unless
    `include_unk`. Each file is replaced atomically; returns their paths.
    """
    from common.io import write_text

    keep = [i for i, token in enumerate(tokens) if include_unk or token != "<unk>"]
    rows = np.asarray(vectors, dtype=np.float32)[keep]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(f"{value:.7g}" for value in row) for row in rows.tolist()]
    vectors_path = write_text(folder / PROJECTOR_VECTORS, "\n".join(lines) + "\n")
    metadata_path = write_text(folder / PROJECTOR_METADATA,
                               "\n".join(tokens[i] for i in keep) + "\n")
    return vectors_path, metadata_path
