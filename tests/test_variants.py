"""CBOW and hierarchical softmax: the data, the NumPy oracle, and every backend against it.

For every (backend, combination): the loss and the gradients of each table against the
oracle, three Adam steps, a bit-exact resume from the optimiser's state, and the same epoch
losses through `w2v train` on a small corpus. The oracle's gradient is checked by finite
differences.
"""
from __future__ import annotations

import importlib
import itertools
import json

import numpy as np
import pytest

from backends.variant_base import VariantState
from common.batching import batchify
from common.cli import main
from common.variants import (LOSSES, MODELS, build_huffman, input_table, output_width,
                             to_variant)
from helpers import EMBED, VOCAB, error_line, make_batch, require_backend, train_tiny

COMBINATIONS = list(itertools.product(MODELS, LOSSES))
WINDOW, NOISE = 3, 5  # make_batch: up to 3 contexts, 5 noise words each
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(params=COMBINATIONS, ids=lambda combination: "-".join(combination))
def combination(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


def counts() -> np.ndarray:
    return np.random.default_rng(7).zipf(1.5, VOCAB).clip(max=10_000)


def variant(name: str, model: str, loss: str, seed: int = 0, *, fresh: bool = False,
            step: str = "chapter", **options: object) -> object:
    """`name`'s VariantBackend on the test vocabulary, with every table randomised (the inner
    one included, so that every gradient is nonzero), or as initialised when `fresh` (the
    inner table at zero: every hierarchical-softmax logit of the first step is exactly 0)."""
    module = importlib.import_module(f"backends.{name}.variants")
    backend = module.VariantBackend(VOCAB, EMBED, model=model, loss=loss, max_window=WINDOW,
                                    num_noise=NOISE, counts=counts(), seed=seed, step=step,
                                    **options)
    if fresh:
        return backend
    rng = np.random.default_rng(seed + 100)
    backend.set_tables({name: rng.normal(0, 0.5, backend.table_shape(name)).astype(np.float32)
                        for name in backend.table_names})
    return backend


# -- the data ---------------------------------------------------------------------------------
def test_huffman_tree_is_a_prefix_code_with_short_paths_for_frequent_words():
    frequencies = counts()
    tree = build_huffman(frequencies)
    lengths = tree.masks.sum(axis=1).astype(int)
    assert tree.paths.shape == tree.codes.shape == (VOCAB, lengths.max())
    codes = {"".join(str(int(bit)) for bit in tree.codes[word, :n])
             for word, n in enumerate(lengths)}
    assert len(codes) == VOCAB                        # every word its own code
    assert not any(a != b and b.startswith(a) for a in codes for b in codes)  # prefix-free
    assert (tree.paths[:, 0] == VOCAB - 2).all()      # every path starts at the root
    assert set(tree.paths[tree.masks > 0].tolist()) == set(range(VOCAB - 1))
    assert lengths[np.argmax(frequencies)] <= lengths[np.argmin(frequencies)]
    # Kraft's equality holds for a full binary tree.
    assert np.isclose(sum(2.0 ** -n for n in lengths), 1.0)


def test_variant_batches_keep_the_chapters_examples(combination):
    model, loss = combination
    rng = np.random.default_rng(0)
    batch = make_batch(rng, all_padding_row=True)
    tree = build_huffman(counts())
    variant_batch = to_variant(batch, model, loss, max_window=WINDOW, num_noise=NOISE, tree=tree)
    rows = len(batch.centers)
    inputs, input_masks, targets, masks, labels = variant_batch
    width = output_width(model, loss, max_window=WINDOW, num_noise=NOISE, depth=tree.depth)
    assert inputs.shape == input_masks.shape == (rows, 1 if model == "skipgram" else 2 * WINDOW)
    assert targets.shape == masks.shape == labels.shape == \
        (rows, batch.masks.shape[1] if (model, loss) == ("skipgram", "negative") else width)
    assert masks[-1].sum() == 0 and input_masks[-1].sum() == 0  # the padding row counts 0
    contexts = [batch.contexts_negatives[row, :int(batch.labels[row].sum())]
                for row in range(rows - 1)]
    if model == "cbow":
        for row, words in enumerate(contexts):
            np.testing.assert_array_equal(inputs[row, :len(words)], words)
            assert input_masks[row].sum() == len(words)
    if (model, loss) == ("cbow", "negative"):
        np.testing.assert_array_equal(targets[:-1, 0], batch.centers[:-1, 0])
        np.testing.assert_array_equal(targets[:-1, 1:],
                                      [batch.contexts_negatives[row, len(words):][:NOISE]
                                       for row, words in enumerate(contexts)])
        assert (labels[:, 0] == 1).all() and (labels[:, 1:] == 0).all()
    if loss == "hsoftmax":  # row 0's path nodes (of its centre, or of each context)
        words = batch.centers[:1, 0] if model == "cbow" else contexts[0]
        on_path = tree.masks[words] > 0
        np.testing.assert_array_equal(targets[0][masks[0] > 0], tree.paths[words][on_path])
        np.testing.assert_array_equal(labels[0][masks[0] > 0], 1 - tree.codes[words][on_path])


def test_oracle_gradient_matches_finite_differences(combination):
    from backends.numpy import variants as oracle

    model, loss = combination
    backend = variant("numpy", model, loss)
    batch = backend.variant_batch(make_batch(np.random.default_rng(3), all_padding_row=True))
    tables = {name: table.astype(np.float64) for name, table in backend.get_tables().items()}
    _, grads = oracle.objective_and_gradients(tables, batch, model, loss)
    rng = np.random.default_rng(4)
    for name, table in tables.items():
        for _ in range(25):
            index = tuple(rng.integers(0, size) for size in table.shape)
            shifted = [{**tables, name: table.copy()} for _ in range(2)]
            shifted[0][name][index] += 1e-5
            shifted[1][name][index] -= 1e-5
            numeric = (oracle.objective(shifted[0], batch, model, loss)
                       - oracle.objective(shifted[1], batch, model, loss)) / 2e-5
            assert abs(numeric - grads[name][index]) < 1e-7, (name, index)
    assert all(np.abs(grads[name]).sum() > 0 for name in (input_table(model),
                                                           "inner" if loss == "hsoftmax"
                                                           else "context"))


# -- every backend against the oracle ---------------------------------------------------------
@pytest.mark.parametrize("fresh", [False, True], ids=["random", "initial"])
def test_loss_and_gradients_match_the_oracle(backend_name, combination, fresh):
    backend = variant(backend_name, *combination, fresh=fresh)
    oracle = variant("numpy", *combination, fresh=fresh)
    batch = make_batch(np.random.default_rng(5), all_padding_row=True)
    loss, grads = backend.loss_and_grads(batch)
    expected_loss, expected = oracle.loss_and_grads(batch)
    assert np.isclose(loss, expected_loss, rtol=RTOL)
    assert set(grads) == set(expected) == set(backend.table_names)
    for name in expected:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose(float(backend.to_numpy(backend.eval_loss(batch))), expected_loss,
                               rtol=RTOL)


def test_three_adam_steps_match_the_oracle(backend_name, combination):
    backend, oracle = variant(backend_name, *combination), variant("numpy", *combination)
    rng = np.random.default_rng(6)
    for _ in range(3):
        batch = make_batch(rng)
        got = float(backend.to_numpy(backend.train_step(batch)))
        assert np.isclose(got, float(oracle.train_step(batch)), rtol=1e-4)
    expected = oracle.get_tables()
    for name, table in backend.get_tables().items():
        np.testing.assert_allclose(table, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    state, want = backend.optimizer_tables(), oracle.optimizer_tables()
    assert state.step == want.step == 3
    for name in backend.table_names:
        np.testing.assert_allclose(state.exp_avg[name], want.exp_avg[name], rtol=1e-4,
                                   atol=1e-7, err_msg=name)


def test_resume_from_the_optimizer_state_is_bit_exact(backend_name, combination):
    rng = np.random.default_rng(8)
    batches = [make_batch(rng) for _ in range(4)]
    straight = variant(backend_name, *combination)
    losses = [float(straight.to_numpy(straight.train_step(batch))) for batch in batches]
    first = variant(backend_name, *combination)
    for batch in batches[:2]:
        first.train_step(batch)
    tables, state = first.get_tables(), first.optimizer_tables()
    resumed = variant(backend_name, *combination, seed=1)  # other tables: all must be replaced
    resumed.set_tables(tables)
    resumed.load_optimizer_tables(VariantState(state.step, state.exp_avg, state.exp_avg_sq))
    again = [float(resumed.to_numpy(resumed.train_step(batch))) for batch in batches[2:]]
    assert again == losses[2:]
    for name, table in resumed.get_tables().items():
        np.testing.assert_array_equal(table, straight.get_tables()[name], err_msg=name)


def test_torchs_fast_step_packs_the_path_nodes_and_keeps_the_oracles_numbers():
    """Skip-gram + hierarchical softmax's fast step: the objective over the real path nodes
    alone gives the oracle's loss, gradients and three Adam steps, as the padded chapter step."""
    require_backend("torch")
    model = "skipgram"
    fast, oracle = (variant(name, model, "hsoftmax", step="fast") for name in ("torch", "numpy"))
    assert fast.objective == fast.net.packed_objective
    chapter = variant("torch", model, "hsoftmax")
    assert chapter.objective == chapter.net.objective
    batch = make_batch(np.random.default_rng(5), all_padding_row=True)
    (loss, grads), (expected_loss, expected) = fast.loss_and_grads(batch), oracle.loss_and_grads(batch)
    assert np.isclose(loss, expected_loss, rtol=RTOL)
    for name in expected:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    rng = np.random.default_rng(6)
    for _ in range(3):
        batch = make_batch(rng)
        got = float(fast.to_numpy(fast.train_step(batch)))
        assert np.isclose(got, float(oracle.train_step(batch)), rtol=1e-4)
    for name, table in fast.get_tables().items():
        np.testing.assert_allclose(table, oracle.get_tables()[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_three_sgd_steps_on_the_decay_schedule_match_the_oracle_across_a_reload(
        backend_name, combination):
    """The framework's stock SGD on the dense gradient is the oracle's `w -= lr g` (the
    untouched rows' gradient is 0); its state is the step count, so a reload after step 1
    continues the decay schedule where it was."""
    rng = np.random.default_rng(9)
    batches = [make_batch(rng) for _ in range(3)]
    sgd = dict(optimizer="sgd", lr=1.5)
    oracle, backend = variant("numpy", *combination, **sgd), variant(backend_name, *combination,
                                                                      **sgd)
    for each in (oracle, backend):
        each.set_lr_schedule("decay", 3)
    expected = [float(oracle.train_step(batch)) for batch in batches]
    assert oracle.next_lr() == pytest.approx(1.5 * 0.004)  # a 4th step: at the floor
    got = [float(backend.to_numpy(backend.train_step(batches[0])))]
    tables, state = backend.get_tables(), backend.optimizer_tables()
    assert state.step == 1
    assert all(moment.shape == (0, EMBED) for moment in (*state.exp_avg.values(),
                                                         *state.exp_avg_sq.values()))
    reloaded = variant(backend_name, *combination, seed=1, **sgd)  # other tables: replaced
    reloaded.set_lr_schedule("decay", 3)
    reloaded.set_tables(tables)
    reloaded.load_optimizer_tables(state)
    got += [float(reloaded.to_numpy(reloaded.train_step(batch))) for batch in batches[1:]]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    want = oracle.get_tables()
    for name, table in reloaded.get_tables().items():
        np.testing.assert_allclose(table, want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert reloaded.optimizer_tables().step == 3


def _epoch_losses(tmp_path, backend: str, model: str, loss: str, *extra: str) -> list[float]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    code, run = train_tiny(tmp_path, "--model", model, "--loss", loss, "--step", "chapter",
                           *extra, backend=backend)
    assert code == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["kind"] == "epoch"]


_REFERENCE: dict[tuple[str, str], list[float]] = {}


def test_every_backend_lands_on_the_oracles_epoch_losses(backend_name, combination, tmp_path):
    if combination not in _REFERENCE:
        _REFERENCE[combination] = _epoch_losses(tmp_path / "oracle", "numpy", *combination)
    losses = _epoch_losses(tmp_path / backend_name, backend_name, *combination)
    assert len(losses) == 2 and losses[1] < losses[0]
    np.testing.assert_allclose(losses, _REFERENCE[combination], rtol=2e-4)


# -- runs, checkpoints and errors -----------------------------------------------------------
@pytest.mark.parametrize("model,loss,optimizer", [("cbow", "hsoftmax", "adam"),
                                                  ("skipgram", "hsoftmax", "adam"),
                                                  ("cbow", "hsoftmax", "sgd")])
def test_an_interrupted_run_resumes_bit_exact(tmp_path, monkeypatch, model, loss, optimizer):
    """sgd: the checkpoint holds the step count and (0, E) moments, the inner table's too."""
    require_backend("numpy")
    # sgd's PTB rate (1.5) overshoots on 50-word batches of the tiny corpus: 0.1 here.
    settings = ("--optimizer", optimizer, *(("--lr", "0.1") if optimizer == "sgd" else ()))
    whole = _epoch_losses(tmp_path / "whole", "numpy", model, loss, *settings)
    monkeypatch.setenv("W2V_INTERRUPT_AFTER_BATCHES", "30")
    (tmp_path / "cut").mkdir()
    code, run = train_tiny(tmp_path / "cut", "--model", model, "--loss", loss, *settings)
    assert code == 130
    monkeypatch.delenv("W2V_INTERRUPT_AFTER_BATCHES")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in rows if row["kind"] == "epoch"] == whole
    assert whole[1] < whole[0]
    report = json.loads((run / "report.json").read_text())
    assert (report["model"], report["loss"]) == (model, loss)
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["loss"]) == (model, loss)


def test_an_impossible_combination_names_what_works(tmp_path, capsys):
    code, _ = train_tiny(tmp_path, "--model", "cbow", "--optimizer", "sparse_adam")
    assert code != 0
    line = error_line(capsys)
    assert "--optimizer sparse_adam trains only --model skipgram --loss negative" in line
    assert "--model cbow --loss negative trains with --optimizer adam or sgd" in line


def test_cbow_exports_the_context_table(tmp_path):
    from common import runs
    from common.embeddings import load_word2vec
    from common.vocab import Vocab

    code, run = train_tiny(tmp_path, "--model", "cbow")
    assert code == 0
    checkpoint = runs.load_checkpoint(run)
    vocab = Vocab.load(run / runs.VOCAB)
    keyed = load_word2vec(run / runs.VECTORS)
    word = vocab.idx_to_token[1]
    np.testing.assert_allclose(keyed[word], checkpoint.context[1], rtol=1e-6)
    assert not np.allclose(keyed[word], checkpoint.center[1])


# -- export ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_projector_export_writes_one_row_per_word_in_the_same_order(tmp_path, capsys, model):
    from common import runs
    from common.vocab import Vocab

    code, run = train_tiny(tmp_path, "--model", model, "--epochs", "1")
    assert code == 0
    assert main(["export", "--run", str(run), "--format", "projector"]) == 0
    vocab = Vocab.load(run / runs.VOCAB)
    checkpoint = runs.load_checkpoint(run)
    table = checkpoint.context if model == "cbow" else checkpoint.center
    vectors = (run / "projector" / "vectors.tsv").read_text(encoding="utf-8").splitlines()
    words = (run / "projector" / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    assert words == vocab.idx_to_token[1:]          # no header, no <unk>, vocabulary order
    assert len(vectors) == len(words)
    rows = np.array([[float(cell) for cell in line.split("\t")] for line in vectors])
    assert rows.shape == (len(words), 16)
    np.testing.assert_allclose(rows, table[1:], rtol=1e-6)  # the input-side table

    out = tmp_path / "elsewhere"
    assert main(["export", "--run", str(run), "--format", "projector", "--out", str(out),
                 "--include-unk"]) == 0
    assert (out / "metadata.tsv").read_text(encoding="utf-8").splitlines() == \
        vocab.idx_to_token
    assert len((out / "vectors.tsv").read_text(encoding="utf-8").splitlines()) == len(vocab)

    again = tmp_path / "again.txt"
    assert main(["export", "--run", str(run), "--out", str(again)]) == 0  # word2vec default
    assert again.read_text(encoding="utf-8") == (run / runs.VECTORS).read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--include-unk"]) != 0
    assert "--include-unk is for --format projector" in error_line(capsys)


def test_sweep_takes_comma_lists_of_models_and_losses(tmp_path, capsys):
    from helpers import tiny_corpus

    out = tmp_path / "sweep"
    code = main(["sweep", "--backend", "numpy", "--corpus", str(tiny_corpus(tmp_path)),
                 "--min-freq", "1", "--epochs", "1", "--batch-size", "64", "--embed-size", "8",
                 "--subsample-t", "1", "--model", "skipgram,cbow",
                 "--loss", "negative,hsoftmax", "--out", str(out), "--sort", "seconds"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    header, *rows = (out / "sweep.tsv").read_text(encoding="utf-8").splitlines()
    columns = header.split("\t")
    assert {"model", "loss"} <= set(columns) and len(rows) == 4
    cells = {tuple(row.split("\t")[columns.index(name)] for name in ("model", "loss"))
             for row in rows}
    assert cells == set(COMBINATIONS)
    assert any(line.startswith("best by") and "--model" in line and "--loss" in line
               for line in printed.splitlines())


def test_the_preflight_counts_the_inner_table_and_the_huffman_paths():
    from common.config import TrainConfig
    from common.preflight import Shape, estimate, huffman_depth_bound

    shape = Shape(vocab_size=6719, tokens=887_521, longest_sentence=80, centres=400_000)
    chapter = estimate(TrainConfig(), shape, fixed_shapes=True).items
    hsoftmax = estimate(TrainConfig(model="cbow", loss="hsoftmax"), shape,
                        fixed_shapes=True).items
    inner = 6718 * 100 * 4
    assert hsoftmax["tables"] == chapter["tables"] + inner
    assert hsoftmax["optimizer state"] == chapter["optimizer state"] + 2 * inner
    depth = huffman_depth_bound(887_521, 6719)
    assert hsoftmax["huffman paths"] == 6719 * depth * 12
    # The bound holds for PTB-like counts: the tree built from Zipf counts is no deeper.
    counts = (887_521 / np.arange(1, 6720)).astype(np.int64) + 1
    assert build_huffman(counts).depth <= huffman_depth_bound(int(counts.sum()), 6719)
