"""`--step chapter|fast`: one setting that reaches every place a run records or reads it."""
from __future__ import annotations

import json

import numpy as np
import pytest

import backends
from common import runs
from common.cli import main
from common.config import TrainConfig
from common.errors import ConfigError
from common.sweep import expand
from helpers import error_line, train_tiny


def test_the_default_is_fast_and_an_unknown_step_is_refused():
    assert TrainConfig().step == "fast"
    with pytest.raises(ConfigError, match="--step must be one of chapter, fast"):
        TrainConfig(step="tuned").validate()
    with pytest.raises(ConfigError, match="--step must be one of chapter, fast"):
        backends.load("numpy")(5, 2, step="tuned")


def test_train_records_the_step_in_config_checkpoint_and_report(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--step", "chapter")
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads((run / runs.CONFIG).read_text())["step"] == "chapter"
    assert runs.load_checkpoint(run).training["step"] == "chapter"
    assert json.loads((run / runs.REPORT).read_text())["step"] == "chapter"
    assert "(numpy, chapter step)" in out  # the closing line names the step that ran


def test_a_resume_may_switch_the_step_and_continues_the_same_state(tmp_path, capsys):
    code, run = train_tiny(tmp_path, "--step", "chapter")
    assert code == 0
    before = runs.load_checkpoint(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--step", "fast",
                 "--no-progress", "--query"]) == 0
    out = capsys.readouterr().out
    assert "(fast step)" in out and "(numpy, fast step)" in out
    assert json.loads((run / runs.CONFIG).read_text())["step"] == "fast"
    after = runs.load_checkpoint(run)
    assert after.training["step"] == "fast"
    assert after.adam_step > before.adam_step
    epochs = json.loads((run / runs.REPORT).read_text())["epochs"]
    assert len(epochs) == 3 and epochs[2]["mean_loss"] < epochs[0]["mean_loss"]


def test_a_bad_step_on_the_command_line_is_one_line(tmp_path, capsys):
    assert main(["train", "--step", "tuned", "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert "--step" in line and "'tuned'" in line
    assert not (tmp_path / "run").exists()


def test_a_sweep_can_compare_the_steps():
    points = expand({"backend": ["numpy"], "step": ["chapter", "fast"]})
    assert [name for name, _ in points] == ["step=chapter", "step=fast"]
    assert [config.step for _, config in points] == ["chapter", "fast"]


def test_both_numpy_steps_give_the_same_run(tmp_path):
    """The tuned step changes how, not what: two tiny runs end on the same figures."""
    figures = {}
    for step in ("chapter", "fast"):
        (tmp_path / step).mkdir()
        code, run = train_tiny(tmp_path / step, "--step", step)
        assert code == 0
        report = json.loads((run / runs.REPORT).read_text())
        figures[step] = [epoch["mean_loss"] for epoch in report["epochs"]]
    np.testing.assert_allclose(figures["chapter"], figures["fast"], rtol=1e-5)
