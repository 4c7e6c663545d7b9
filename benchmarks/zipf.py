"""The one generator of synthetic corpora every benchmark uses: Zipf-distributed word ranks.

Word rank r (0 = most frequent) of `types` is drawn with probability proportional to
(r + 1) ** -exponent; sentences have `line_length` tokens (the last one shorter), or, with
`poisson_lines`, 1 + Poisson(line_length - 1) tokens. Everything follows from `seed`, and the
draw is made in chunks so generating never sets a benchmark's peak memory.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_DRAW_CHUNK = 1 << 18


def sentence_offsets(tokens: int, line_length: int, *, poisson_lines: bool = False,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """(S + 1,) int64 offsets of sentences summing to exactly `tokens`."""
    if not poisson_lines:
        return np.concatenate([np.arange(0, tokens, line_length), [tokens]]).astype(np.int64)
    rng = rng or np.random.default_rng(0)
    # 5% more sentences than the mean needs, plus slack; extended in the rare case it falls short.
    lengths = 1 + rng.poisson(line_length - 1, size=tokens // line_length * 21 // 20 + 100)
    while lengths.sum() < tokens:
        lengths = np.concatenate([lengths, 1 + rng.poisson(line_length - 1, size=1000)])
    ends = np.cumsum(lengths)
    count = int(np.searchsorted(ends, tokens)) + 1
    lengths = lengths[:count]
    lengths[-1] -= int(ends[count - 1]) - tokens
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def zipf_corpus(tokens: int, *, types: int, exponent: float, line_length: int, seed: int = 0,
                poisson_lines: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets): word ranks 0..types-1 and sentence offsets.

    Shapes: ids (tokens,) int32, offsets (S + 1,) int64.
    """
    rng = np.random.default_rng(seed)
    offsets = sentence_offsets(tokens, line_length, poisson_lines=poisson_lines, rng=rng)
    cdf = np.cumsum(np.arange(1, types + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    ids = np.empty(tokens, dtype=np.int32)
    for start in range(0, tokens, _DRAW_CHUNK):
        part = ids[start:start + _DRAW_CHUNK]
        drawn = np.searchsorted(cdf, rng.random(len(part)))
        np.minimum(drawn, types - 1, out=drawn)
        part[:] = drawn
    return ids, offsets


def word(rank: int) -> str:
    """The spelling of rank `rank`: `w` and the rank in base 36 (short, distinct)."""
    return "w" + np.base_repr(rank, 36).lower()


def write_text(path: str | os.PathLike, tokens: int, *, types: int, exponent: float,
               line_length: int, seed: int = 0) -> Path:
    """The corpus as a UTF-8 text file, one sentence per line, written atomically.

    Drawn and written a block of lines at a time, so a 10**8-token file never sits in memory.
    """
    from common.io import atomic_path

    words = np.array([word(rank) for rank in range(types)], dtype=object)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, types + 1, dtype=np.float64) ** -exponent)
    cdf /= cdf[-1]
    block = max(line_length, (1 << 20) // line_length * line_length)
    with atomic_path(path, suffix=".txt") as temporary, open(temporary, "w") as out:
        for start in range(0, tokens, block):
            count = min(block, tokens - start)
            ids = np.minimum(np.searchsorted(cdf, rng.random(count)), types - 1)
            drawn = words[ids].tolist()
            out.write("".join(" ".join(drawn[i:i + line_length]) + "\n"
                              for i in range(0, count, line_length)))
    return Path(path)
