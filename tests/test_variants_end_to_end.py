"""word2vec's other three combinations on PTB, per backend: 5 epochs, the chapter's settings.

Marked slow, as `tests/test_end_to_end.py` (CI runs it on the shared PTB copy, `W2V_PTB`).
Every backend must land on the epoch losses below, the one place they are written; they were
measured once with torch (`w2v train --backend torch --corpus ptb --model M --loss L`) and
change only when the data pipeline's random stream or a combination's batches do.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from common.cli import main

pytestmark = pytest.mark.slow

EPOCH_LOSSES = {
    ("cbow", "negative"): (0.4778, 0.4234, 0.3918, 0.3561, 0.3211),
    ("skipgram", "hsoftmax"): (0.6625, 0.6427, 0.6267, 0.6139, 0.6043),
    ("cbow", "hsoftmax"): (0.6688, 0.6448, 0.6219, 0.5994, 0.5796),
}
# What float32 summation order moves across frameworks over 3,345 steps (as the chapter's).
LOSS_TOLERANCE = 3e-4
# `make test`'s budget (35 minutes on 2 cores) holds every backend on cbow + hsoftmax (the
# issue's command) and tf, the quickest on these combinations, on all three; the other pairs
# train the same code and pass the same parity tests on small data (tests/test_variants.py).
# W2V_VARIANTS_PTB=all trains every (backend, combination) pair: about 40 minutes more.
EVERY_PAIR = os.environ.get("W2V_VARIANTS_PTB", "") == "all"


@pytest.mark.parametrize("model,loss", list(EPOCH_LOSSES))
def test_every_backend_lands_on_the_recorded_ptb_losses(backend_name, model, loss, ptb_data,
                                                        tmp_path: Path, capsys):
    if backend_name == "numpy" and tuple(map(int, np.__version__.split(".")[:2])) < (1, 25):
        pytest.skip("numpy's oracle runs PTB in the NumPy 2 environment (np.add.at is "
                    f"unbuffered in NumPy {np.__version__})")
    if not EVERY_PAIR and (model, loss) != ("cbow", "hsoftmax") and backend_name != "tf":
        pytest.skip("W2V_VARIANTS_PTB=all trains this pair on PTB (make test: cbow + "
                    "hsoftmax on every backend, every combination on tf)")
    run = tmp_path / "run"
    code = main(["train", "--backend", backend_name, "--corpus", "ptb", "--data",
                 str(ptb_data), "--model", model, "--loss", loss, "--out", str(run),
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((run / "report.json").read_text())
    assert (report["model"], report["loss"]) == (model, loss)
    assert f"--model {model} --loss {loss}" in out
    losses = [epoch["mean_loss"] for epoch in report["epochs"]]
    np.testing.assert_allclose(losses, EPOCH_LOSSES[model, loss], rtol=0, atol=LOSS_TOLERANCE)
