"""Evaluation on tiny hand-made vectors whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from common.evaluate import analogies, format_results, word_pairs


def _keyed(words: dict[str, list[float]]):
    from gensim.models import KeyedVectors

    keyed = KeyedVectors(vector_size=len(next(iter(words.values()))))
    keyed.add_vectors(list(words), np.asarray(list(words.values()), dtype=np.float32))
    return keyed


def _angle_vectors() -> dict[str, list[float]]:
    """Words on a quarter circle: cosine to `anchor` falls steadily from a to e."""
    angles = dict(anchor=0.0, a=0.1, b=0.4, c=0.7, d=1.0, e=1.3)
    return {word: [float(np.cos(t)), float(np.sin(t))] for word, t in angles.items()}


def _pairs_file(tmp_path, scores: dict[str, float], extra: str = ""):
    path = tmp_path / "pairs.tsv"
    path.write_text("# word1\tword2\tscore\n" + "".join(
        f"anchor\t{word}\t{score}\n" for word, score in scores.items()) + extra, encoding="utf-8")
    return path


def test_perfect_and_reversed_rankings(tmp_path):
    keyed = _keyed(_angle_vectors())
    agreeing = dict(a=9.0, b=7.0, c=5.0, d=3.0, e=1.0)
    perfect = word_pairs(keyed, _pairs_file(tmp_path, agreeing))
    assert perfect["spearman"] == pytest.approx(1.0)
    reversed_scores = {word: 10 - score for word, score in agreeing.items()}
    assert word_pairs(keyed, _pairs_file(tmp_path, reversed_scores))["spearman"] == \
        pytest.approx(-1.0)


def test_coverage_counts_out_of_vocabulary_pairs(tmp_path):
    keyed = _keyed(_angle_vectors())
    path = _pairs_file(tmp_path, dict(a=9.0, b=7.0, c=5.0, d=3.0),
                       extra="anchor\tzebra\t2.0\nunicorn\tb\t1.0\n")
    result = word_pairs(keyed, path)
    assert (result["covered"], result["total"]) == (4, 6)
    assert result["spearman"] == pytest.approx(1.0)


def test_an_analogy_that_must_be_found(tmp_path):
    # king - man + woman lands on queen; royalty and gender are separate axes.
    keyed = _keyed({"man": [1, 0, 0], "woman": [0, 1, 0], "king": [1, 0, 1],
                    "queen": [0, 1, 1], "apple": [0.5, 0.5, -1], "car": [-1, -1, 0.2]})
    path = tmp_path / "questions.txt"
    path.write_text(": family\nman king woman queen\nman woman king queen\n"
                    "man king woman zebra\n", encoding="utf-8")
    result = analogies(keyed, path)
    assert (result["correct"], result["covered"], result["total"]) == (2, 2, 3)
    assert result["accuracy"] == pytest.approx(1.0)
    lines = format_results({"analogies": result})
    assert lines == ["analogies (3CosAdd): accuracy 1.000 (2/2 answered; 2/3 questions covered)"]


def test_cli_evaluate_and_analogy(tmp_path, capsys):
    import json

    from common.cli import main
    from helpers import error_line, train_tiny

    code, run = train_tiny(tmp_path)
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["wordsim353"]["total"] == 353 and results["simlex999"]["total"] == 999
    assert (run / "evaluation.json").is_file()
    assert main(["analogy", "chip", "intel", "money", "-k", "2", "--run", str(run)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["analogy", "chip", "intel", "monye", "--run", str(run)]) == 2
    assert "did you mean money" in error_line(capsys)


def test_in_memory_vectors_leave_out_unk_and_keep_the_order():
    from common.embeddings import to_keyed_vectors

    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    keyed = to_keyed_vectors(["<unk>", "the", "chip", "intel"], vectors)
    assert keyed.index_to_key == ["the", "chip", "intel"]
    np.testing.assert_array_equal(keyed["chip"], vectors[2])


def test_no_covered_question_has_no_accuracy(tmp_path):
    keyed = _keyed({"man": [1.0, 0.0], "woman": [0.0, 1.0]})
    path = tmp_path / "questions.txt"
    path.write_text(": family\nman king woman queen\n", encoding="utf-8")
    result = analogies(keyed, path)
    assert (result["correct"], result["covered"], result["total"]) == (0, 0, 1)
    assert np.isnan(result["accuracy"])


def test_quality_plot_is_written(tmp_path):
    from common.plotting import plot_quality_vs_seconds

    import matplotlib.image

    curves = {"a": [[(1.0, 0.1), (2.0, 0.3)], [(1.2, 0.2)]], "b": [[(1.5, 0.2)]]}
    path = plot_quality_vs_seconds(curves, tmp_path / "q.png", target=0.39, budget=15)
    image = matplotlib.image.imread(path)  # raises on a file that is no PNG
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something is drawn, not a blank canvas
    # The curves are drawn from the data: other figures give another image.
    other = plot_quality_vs_seconds({"a": [[(1.0, 0.05), (2.0, 0.35)]]}, tmp_path / "o.png",
                                    target=0.39, budget=15)
    assert not np.array_equal(matplotlib.image.imread(other), image)
