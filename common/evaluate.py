"""How good are the vectors: word similarity and analogies, with gensim's evaluators and data.

The data files ship inside gensim's wheel (`gensim.test.utils.datapath`), so evaluation works
offline. Coverage is reported with every score: on a small corpus like PTB many test words
are out of vocabulary, and a score over 40% of the pairs means something else than over 100%.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

WORD_PAIRS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
ANALOGIES = "questions-words.txt"


def dataset(name: str) -> Path:
    """The path of a gensim-shipped evaluation file."""
    from gensim.test.utils import datapath

    return Path(datapath(name))


def _count_lines(path: Path, comment: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip() and not line.startswith(comment))


def word_pairs(keyed: Any, path: str | Path) -> dict[str, float]:
    """Spearman rho (and Pearson r) of cosine against human scores, with pair coverage."""
    path = Path(path)
    logging.getLogger("gensim").setLevel(logging.WARNING)  # gensim logs every OOV pair at INFO
    total = _count_lines(path, "#")
    try:
        with warnings.catch_warnings():
            # With one or two covered pairs the correlation is undefined: scipy warns and
            # returns nan, which is what we report; the warning would only be noise.
            warnings.simplefilter("ignore")
            pearson, spearman, oov_percent = keyed.evaluate_word_pairs(str(path))
    except ValueError:  # gensim refuses when no pair is in the vocabulary: nothing to rank
        return {"spearman": float("nan"), "pearson": float("nan"), "covered": 0, "total": total}
    covered = round(total * (1 - oov_percent / 100))
    rho = float(spearman.statistic if hasattr(spearman, "statistic") else spearman[0])
    r = float(pearson.statistic if hasattr(pearson, "statistic") else pearson[0])
    return {"spearman": rho if math.isfinite(rho) else float("nan"), "pearson": r,
            "covered": covered, "total": total}


def analogies(keyed: Any, path: str | Path) -> dict[str, float]:
    """3CosAdd accuracy over the questions whose four words are all in the vocabulary."""
    path = Path(path)
    logging.getLogger("gensim").setLevel(logging.WARNING)
    try:
        score, sections = keyed.evaluate_word_analogies(str(path))
    except (ValueError, ZeroDivisionError):  # no question fully in the vocabulary
        return {"accuracy": float("nan"), "correct": 0, "covered": 0,
                "total": _count_lines(path, ":")}
    overall = next((s for s in sections if s["section"] == "Total accuracy"), sections[-1])
    covered = len(overall["correct"]) + len(overall["incorrect"])
    return {"accuracy": float(score) if covered else float("nan"), "correct": len(overall["correct"]), "covered": covered,
            "total": _count_lines(path, ":")}


def evaluate(keyed: Any) -> dict[str, dict[str, float]]:
    """WordSim353 and SimLex-999 (Spearman rho) and Google analogies (accuracy)."""
    results = {name: word_pairs(keyed, dataset(file)) for name, file in WORD_PAIRS.items()}
    results["analogies"] = analogies(keyed, dataset(ANALOGIES))
    return results


def format_results(results: dict[str, dict[str, float]]) -> list[str]:
    """One line per benchmark, coverage included."""
    lines = []
    for name in WORD_PAIRS:
        if name in results:
            r = results[name]
            lines.append(f"{name}: Spearman rho {r['spearman']:.3f} over {r['covered']}/"
                         f"{r['total']} pairs")
    if "analogies" in results:
        r = results["analogies"]
        lines.append(f"analogies (3CosAdd): accuracy {r['accuracy']:.3f} ({r['correct']}/"
                     f"{r['covered']} answered; {r['covered']}/{r['total']} questions covered)")
    return lines
