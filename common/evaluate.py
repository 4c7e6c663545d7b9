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
from typing import Any, Sequence

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


MAX_FILE_BYTES = 64 << 20  # far above any benchmark (questions-words.txt is 0.6 MB)


def check_file(path: str | Path, kind: str) -> Path:
    """A user's evaluation file, validated before gensim reads it (gensim skips or crashes on
    what it cannot parse): `kind` "pairs" (WORD<TAB>WORD<TAB>SCORE, `#` comments, as
    wordsim353.tsv) or "analogies" (`: section` lines, then four words a line, as
    questions-words.txt). Every problem is a one-line DataError naming the file and line.
    """
    from common.errors import DataError
    from common.io import read_limited

    path = Path(path)
    expected = ("WORD<TAB>WORD<TAB>SCORE (as wordsim353.tsv)" if kind == "pairs" else
                "`: section` or four words (as questions-words.txt)")
    text = read_limited(path, limit=MAX_FILE_BYTES, advice=f"give a file of {expected}")
    entries, in_section = 0, kind == "pairs"
    for number, line in enumerate(text.split("\n"), start=1):
        if kind == "analogies" and line.startswith(":"):
            in_section = True
            continue
        if not line.strip() or (kind == "pairs" and line.startswith("#")):
            continue
        if not in_section:  # gensim refuses questions before the first section
            raise DataError(f"{path}:{number}: expected a `: section` line before the first "
                            f"question (as questions-words.txt)")
        fields = line.split("\t") if kind == "pairs" else line.split()
        valid = len(fields) == 4 if kind == "analogies" else len(fields) == 3
        if valid and kind == "pairs":
            try:
                valid = math.isfinite(float(fields[2])) and all(f.strip() for f in fields[:2])
            except ValueError:
                valid = False
        if not valid:
            shown = line if len(line) <= 50 else line[:47] + "..."
            raise DataError(f"{path}:{number}: expected {expected}, got {shown!r}")
        entries += 1
    if not entries:
        raise DataError(f"evaluation file {path} holds no entries: give a file of {expected}")
    return path


def evaluate(keyed: Any, *, pairs: Sequence[str | Path] = (),
             analogy_files: Sequence[str | Path] = ()) -> dict[str, dict[str, float]]:
    """WordSim353 and SimLex-999 (Spearman rho) and Google analogies (accuracy), then the
    user's own files (`pairs`, `analogy_files`), each scored under its file name."""
    pairs = [check_file(path, "pairs") for path in pairs]  # all checked before any scoring
    analogy_files = [check_file(path, "analogies") for path in analogy_files]
    results = {name: word_pairs(keyed, dataset(file)) for name, file in WORD_PAIRS.items()}
    results["analogies"] = analogies(keyed, dataset(ANALOGIES))
    for path in pairs:
        results[path.name] = word_pairs(keyed, path)
    for path in analogy_files:
        results[path.name] = analogies(keyed, path)
    return results


def format_results(results: dict[str, dict[str, float]]) -> list[str]:
    """One line per benchmark, coverage included."""
    lines = []
    for name, r in results.items():
        if "spearman" in r:
            lines.append(f"{name}: Spearman rho {_figure(r['spearman'])} over {r['covered']}/"
                         f"{r['total']} pairs")
        elif "accuracy" in r:
            label = "analogies (3CosAdd)" if name == "analogies" else f"{name} (3CosAdd)"
            lines.append(f"{label}: accuracy {_figure(r['accuracy'])} ({r['correct']}/"
                         f"{r['covered']} answered; {r['covered']}/{r['total']} questions "
                         f"covered)")
    return lines


def _figure(value: float | None) -> str:
    """A score to 3 decimals; `nan` where undefined (null in JSON)."""
    return "nan" if value is None else f"{value:.3f}"
