"""`--data-parallel N` (issue 21): N replicas on each framework's own engine train as one.

Per framework backend and step, a run with two replicas (a real `w2v train` subprocess: torch
starts two processes over gloo, jax two host devices, tf two logical CPUs, mxnet two
contexts) is stopped after 3 steps and then resumed to the end of its epoch; its parameters
at the stop and its epoch loss must equal a one-replica run's (torch also with its sparse
optimisers). The multi-process faults of our launcher (a replica killed, a signal, a taken
port, a wrong world size) are torch's, the one engine with a replica per process; MXNet's
dist_sync (scheduler, server, two workers), TF_CONFIG's and jax.distributed's two processes
are run and a worker killed; the dist_sync and jax runs are then resumed.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends.base import Params
from common import parallel, runs
from common.cli import main
from common.config import TrainConfig
from common.errors import ConfigError
from helpers import assert_params_close, error_line, make_batch, require_backend, tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 50  # tiny corpus: 3,200 centre words at t=1, batches of 64
RTOL, ATOL = 1e-5, 1e-6  # float32, summed in another order (tests/test_parity.py's)


def _args(corpus: Path, run: Path, backend: str, step: str, *extra: str,
          epochs: int = 1) -> list[str]:
    return ["train", "--backend", backend, "--corpus", str(corpus), "--min-freq", "1",
            "--epochs", str(epochs), "--batch-size", "64", "--embed-size", "16",
            "--subsample-t", "1", "--seed", "3", "--step", step, "--out", str(run),
            "--no-progress", "--query", *extra]


def _w2v(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-m", "common.cli", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=240)


def _epoch_losses(run: Path) -> list[float]:
    return [epoch["mean_loss"] for epoch in json.loads((run / runs.REPORT).read_text())["epochs"]]


def _stopped_after(run: Path, steps: int) -> runs.Checkpoint:
    checkpoint = runs.load_checkpoint(run)
    assert checkpoint.position["batch"] == steps and checkpoint.adam_step == steps
    return checkpoint


@pytest.fixture
def torch_replicas() -> None:
    """The faults of a replica per process: torch's engine (skipped where torch is not)."""
    require_backend("torch")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("corpus"))


def test_shards_split_a_batch_into_its_rows_in_order():
    batch = make_batch(np.random.default_rng(0), batch_size=7)
    parts = [parallel.shard(batch, 3, index) for index in range(3)]
    assert [len(part.centers) for part in parts] == [2, 2, 3]
    for field in range(4):
        assert np.array_equal(np.concatenate([part[field] for part in parts]), batch[field])
    padded = parallel.shards(batch, 2)  # equal shares for one process feeding N devices
    assert [len(part.centers) for part in padded] == [4, 4]
    assert not padded[1].masks[-1].any()  # the added row is all padding: it counts 0
    assert parallel.bytes_all_reduced(6719, 100) == 2 * 6719 * 100 * 4


def test_the_setting_is_stored_checked_and_swept(tmp_path, capsys, corpus):
    from common.sweep import expand

    with pytest.raises(ConfigError, match="--data-parallel 3 exceeds --batch-size 2"):
        TrainConfig(data_parallel=3, batch_size=2).validate()
    with pytest.raises(ConfigError, match="--data-parallel must be a positive integer"):
        TrainConfig(data_parallel=0).validate()
    points = expand({"backend": ["torch"], "data_parallel": [2], "lr": [0.001, 0.002]})
    assert [config.data_parallel for _, config in points] == [2, 2]
    with pytest.raises(ConfigError, match="--data-parallel takes one value in a sweep"):
        expand({"data_parallel": [1, 2]})
    code = main(_args(corpus, tmp_path / "numpy", "numpy", "fast", "--data-parallel", "2"))
    assert code == 2
    assert "numpy backend has no distributed engine" in error_line(capsys)
    code = main(_args(corpus, tmp_path / "one", "numpy", "fast"))
    assert code == 0
    assert json.loads((tmp_path / "one" / runs.CONFIG).read_text())["data_parallel"] == 1


def _two_replicas_train_as_one(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch,
                               backend: str, step: str, *extra: str) -> None:
    """Parameters after 3 steps (float32 tolerance) and the epoch loss (1e-4 relative).

    One replica in this process, two in a subprocess (JAX and TensorFlow have started here
    with one CPU device). tf's fast step runs 8 steps per compiled call, so with one replica
    it stops after 8, and both are compared there.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    steps = 8 if (backend, step) == ("tf", "fast") else 3
    monkeypatch.setenv("W2V_INTERRUPT_AFTER_BATCHES", str(steps))
    assert main(_args(corpus, one, backend, step, *extra)) == 130
    double = _w2v(_args(corpus, two, backend, step, *extra, "--data-parallel", "2"))
    assert double.returncode == 130, double.stderr
    assert "2 data-parallel replicas" in double.stdout  # as the engine counts them
    assert json.loads((two / runs.CONFIG).read_text())["data_parallel"] == 2
    monkeypatch.delenv("W2V_INTERRUPT_AFTER_BATCHES")
    params_one, params_two = _stopped_after(one, steps), _stopped_after(two, steps)
    assert_params_close(Params(params_two.center, params_two.context),
                        Params(params_one.center, params_one.context), rtol=RTOL, atol=ATOL)
    assert (params_one.inner is None) == (params_two.inner is None)
    if params_one.inner is not None:  # hierarchical softmax: the table and its moments
        for got, want in zip(params_two.inner, params_one.inner):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if params_one.exp_avg[0].size:  # the moments (sparse_adam: the touched rows') too
        assert_params_close(Params(*params_two.exp_avg), Params(*params_one.exp_avg),
                            rtol=RTOL, atol=ATOL)
    assert main(["train", "--resume", str(one), "--no-progress", "--query"]) == 0
    resumed = _w2v(["train", "--resume", str(two), "--no-progress", "--query"])
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(_epoch_losses(two), _epoch_losses(one), rtol=1e-4)


def test_two_replicas_train_as_one(tmp_path, corpus, framework_backend, step, monkeypatch):
    _two_replicas_train_as_one(tmp_path, corpus, monkeypatch, framework_backend, step)


# The other combinations on each engine: torch's (a process per replica, the slowest to start)
# with one of them, the in-process engines with all three.
VARIANT_COMBINATIONS = [("skipgram", "hsoftmax"), ("cbow", "negative"), ("cbow", "hsoftmax")]


@pytest.mark.parametrize("backend, model, loss", [
    ("torch", "cbow", "hsoftmax"),  # a table DDP must be told of, and CBOW's batch
    *((backend, *combination) for backend in ("jax", "tf", "mxnet")
      for combination in VARIANT_COMBINATIONS)])
def test_two_replicas_train_every_combination_as_one(tmp_path, corpus, backend, model, loss,
                                                     monkeypatch):
    """As above, for CBOW and hierarchical softmax (`DataParallelVariant`, the chapter step;
    the fast step runs the same one): the inner-node table and its moments after 3 steps
    too."""
    require_backend(backend)
    _two_replicas_train_as_one(tmp_path, corpus, monkeypatch, backend, "chapter",
                               "--model", model, "--loss", loss)


@pytest.mark.parametrize("optimizer", ["sparse_adam", "sgd"])
def test_two_replicas_train_sparse_optimisers_as_one(tmp_path, corpus, step, optimizer,
                                                     monkeypatch, torch_replicas):
    """torch's replicas all-reduce sparse gradients: DDP over `nn.Embedding(sparse=True)`
    (chapter step), gloo's sparse all-reduce of the touched rows (fast step)."""
    _two_replicas_train_as_one(tmp_path, corpus, monkeypatch, "torch", step,
                               "--optimizer", optimizer)


def test_a_killed_replica_stops_the_run_which_resumes_with_any_count(tmp_path, corpus, torch_replicas):
    """Replica 1 dies by SIGKILL in epoch 2: one line naming it, the epoch-1 checkpoint
    intact, and `--resume --data-parallel 1` ends where an uninterrupted run ends."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_args(corpus, reference, "torch", "chapter", epochs=2)) == 0
    killed = _w2v(_args(corpus, run, "torch", "chapter", "--data-parallel", "2", epochs=2),
                  W2V_INTERRUPT_AFTER_BATCHES=str(BATCHES_PER_EPOCH + 10),
                  W2V_INTERRUPT_SIGNAL="SIGKILL", W2V_INTERRUPT_RANK="1")
    assert killed.returncode == 1
    line = [line for line in killed.stderr.splitlines() if line.startswith("w2v:")]
    assert len(line) == 1 and "replica 1 (pid" in line[0] and "killed by SIGKILL" in line[0]
    assert "is intact" in line[0] and f"--resume {run}" in line[0]
    checkpoint = runs.load_checkpoint(run)
    assert checkpoint.position == {**checkpoint.position, "epoch": 1, "batch": 0}
    assert not list(run.glob(".*.tmp"))  # nothing half-written
    resumed = _w2v(["train", "--resume", str(run), "--data-parallel", "1", "--no-progress",
                    "--query"])
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


def test_a_signal_stops_every_replica_at_one_batch_boundary(tmp_path, corpus, torch_replicas):
    """SIGTERM reaches replica 0 alone; both stop after the same batch, one resume line,
    exit 143, and the resumed run (two replicas again) ends as an uninterrupted one."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_args(corpus, reference, "torch", "fast", epochs=2)) == 0
    stopped = _w2v(_args(corpus, run, "torch", "fast", "--data-parallel", "2", epochs=2),
                   W2V_INTERRUPT_AFTER_BATCHES="13", W2V_INTERRUPT_SIGNAL="SIGTERM",
                   W2V_INTERRUPT_RANK="0")
    assert stopped.returncode == 143, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("w2v:")]
    assert len(lines) == 1 and "after batch 13 of 50" in lines[0], lines
    assert f"w2v train --resume {run}" in lines[0]
    resumed = _w2v(["train", "--resume", str(run), "--no-progress", "--query"])
    assert resumed.returncode == 0, resumed.stderr
    assert "2 data-parallel replicas" in resumed.stdout
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


def test_ctrl_c_to_the_launcher_reaches_every_replica_once(tmp_path, corpus, torch_replicas):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli",
         *_args(corpus, run, "torch", "fast", "--data-parallel", "2", epochs=200)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # bounded: the epoch lines come within seconds
            if line.startswith("epoch 1:"):
                break
        process.send_signal(2)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("w2v:")]
    assert len(lines) == 1 and "checkpoint saved" in lines[0], lines
    position = runs.load_checkpoint(run).position
    assert 1 <= position["epoch"] < 200


def test_a_port_in_use_and_a_wrong_world_size_are_one_line(tmp_path, capsys, corpus,
                                                          monkeypatch, torch_replicas):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        code = main(_args(corpus, tmp_path / "a", "torch", "fast", "--data-parallel", "2"))
    assert code == 2
    assert f"port {port} on 127.0.0.1 (MASTER_PORT) is in use" in error_line(capsys)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    code = main(_args(corpus, tmp_path / "b", "torch", "fast", "--data-parallel", "2"))
    assert code == 2
    assert "RANK=0 of WORLD_SIZE=3, but --data-parallel is 2" in error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_framework_started_without_the_devices_says_so(framework_backend):
    """In-process (JAX and TensorFlow have started here with one CPU device): one line."""
    import backends

    backend_class = backends.load(framework_backend)
    backend_class(4, 2)  # a model: the framework has started, as in earlier tests here
    if framework_backend in ("torch", "mxnet"):  # processes, contexts: nothing to reserve
        backend_class.prepare_replicas(64)
        return
    with pytest.raises(ConfigError, match="run it in a fresh process"):
        backend_class.prepare_replicas(64)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multi_process_env(backend: str, process: int) -> tuple[list[str], dict[str, str]]:
    """(command prefix, environment) of process `process` of 2 in the README's launch."""
    if backend == "torch":  # two torchruns, as on two hosts
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        return ([torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
                 str(process), "--master-addr", "127.0.0.1", "--master-port", PORTS[0], "-m",
                 "common.cli"], {})
    if backend == "jax":
        return ([sys.executable, "-m", "common.cli"],
                {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{PORTS[0]}", "JAX_NUM_PROCESSES": "2",
                 "JAX_PROCESS_ID": str(process)})
    cluster = {"worker": [f"127.0.0.1:{PORTS[0]}", f"127.0.0.1:{PORTS[1]}"]}
    return ([sys.executable, "-m", "common.cli"],
            {"TF_CONFIG": json.dumps({"cluster": cluster,
                                      "task": {"type": "worker", "index": process}})})


PORTS: list[str] = []


@pytest.mark.parametrize("backend", ["torch", "jax", "tf"])
def test_the_readmes_multi_host_launch_runs_as_two_local_processes(tmp_path, corpus, backend):
    """torchrun --nnodes 2, jax.distributed's coordinator, TF_CONFIG: two processes over
    127.0.0.1 train the chapter step as one replica does (mxnet: one machine only)."""
    require_backend(backend)
    PORTS[:] = [str(_free_port()), str(_free_port())]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_args(corpus, reference, backend, "chapter")) == 0
    processes = []
    for process in range(2):
        command, env = _multi_process_env(backend, process)
        processes.append(subprocess.Popen(
            [*command, *_args(corpus, run, backend, "chapter", "--data-parallel", "2")[0:]],
            cwd=ROOT, env=dict(os.environ, **env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:]
    assert "2 data-parallel replicas" in outputs[0][0]
    # The second process prints nothing of the run (gloo may say it connected).
    assert "epoch" not in outputs[1][0] and "training with" not in outputs[1][0]
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


def _dist_sync_env(port: int, role: str) -> dict[str, str]:
    """What MXNet's launcher sets for one role of 2 workers and 1 server over 127.0.0.1."""
    return dict(os.environ, DMLC_ROLE=role, DMLC_PS_ROOT_URI="127.0.0.1",
                DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_WORKER="2", DMLC_NUM_SERVER="1",
                DMLC_NODE_HOST="127.0.0.1")


def _dist_sync_launch(args: list[str], env: dict[str, str] | None = None,
                      second_worker: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """`w2v ARGS` as MXNet's scheduler, server and two workers over 127.0.0.1; `env` for every
    role, `second_worker` for the last."""
    port, command = _free_port(), [sys.executable, "-m", "common.cli", *args]
    roles = ["scheduler", "server", "worker", "worker"]
    return [subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE,
                             env={**_dist_sync_env(port, role), **(env or {}),
                                  **((second_worker or {}) if index == 3 else {})})
            for index, role in enumerate(roles)]


def _dist_sync_ran(processes: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """Every role's (stdout, stderr), once each ended by itself with 0 (bounded; killed after)."""
    try:
        outputs = [process.communicate(timeout=180) for process in reversed(processes)][::-1]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0, 0, 0], \
        [stderr[-2000:] for _, stderr in outputs]
    return outputs


def test_mxnets_dist_sync_refuses_the_other_combinations_in_one_line(tmp_path, corpus, capsys,
                                                                     monkeypatch):
    """dist_sync workers train the chapter's combination (both steps); another combination is
    refused before the worker joins, in one line naming what works."""
    require_backend("mxnet")
    monkeypatch.setenv("DMLC_ROLE", "worker")
    code = main(_args(corpus, tmp_path / "run", "mxnet", "chapter", "--data-parallel", "2",
                      "--model", "cbow"))
    assert code == 2
    assert "dist_sync workers train --model skipgram --loss negative" in error_line(capsys)


@pytest.mark.parametrize("step", ["chapter", "fast"])
def test_mxnets_dist_sync_launch_runs_as_two_local_workers(tmp_path, corpus, step):
    """The README's MXNet launch (scheduler, server, two workers, each `w2v train` with the
    launcher's DMLC_* variables): the workers sum their shares' gradients through the
    dist_sync kvstore and train as one replica does; every role ends by itself."""
    require_backend("mxnet")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_args(corpus, reference, "mxnet", step, epochs=2)) == 0
    outputs = _dist_sync_ran(_dist_sync_launch(
        _args(corpus, run, "mxnet", step, "--data-parallel", "2", epochs=2)))
    workers = [stdout for stdout, _ in outputs[2:]]
    assert sum("2 data-parallel replicas" in stdout for stdout in workers) == 1  # rank 0
    assert sum("epoch" in stdout for stdout in workers) == 1
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


# The fault hook: the process whose RANK is 1 SIGKILLs itself 10 batches into epoch 2.
KILL_RANK_1 = dict(W2V_INTERRUPT_AFTER_BATCHES=str(BATCHES_PER_EPOCH + 10),
                   W2V_INTERRUPT_SIGNAL="SIGKILL", W2V_INTERRUPT_RANK="1")


def _survivor_stderr(processes: list[subprocess.Popen], survivor: int, killed: int) -> str:
    """The survivor's stderr once it ended (exit 75) after `killed` died by SIGKILL; every wait
    bounded, every process (MXNet's scheduler and server too) killed afterwards."""
    try:
        _, stderr = processes[survivor].communicate(timeout=120)
        processes[killed].wait(timeout=10)
    finally:
        for process in processes:
            process.kill()
            process.communicate()
    assert processes[killed].returncode == -9 and processes[survivor].returncode == 75, \
        stderr[-2000:]
    return stderr


def test_a_killed_dist_sync_worker_ends_the_other_in_one_line_and_the_run_resumes(tmp_path,
                                                                                   corpus):
    """A worker SIGKILLed in epoch 2: MXNet's parameter server would keep the other waiting
    for ever; it ends within the collective timeout, with one line and no traceback, and the
    epoch-1 checkpoint is intact (the scheduler and server, MXNet's, are stopped here). Two
    fresh dist_sync workers then `--resume` it to one replica's epoch losses."""
    require_backend("mxnet")
    reference, run = tmp_path / "reference", tmp_path / "run"
    # 30 s, not less: a live worker waits out rank 0's epoch-end checkpoint and evaluation
    # inside a step, which on a loaded 2-core machine took over 10 s once.
    processes = _dist_sync_launch(
        _args(corpus, run, "mxnet", "chapter", "--data-parallel", "2", epochs=3),
        env=dict(KILL_RANK_1, W2V_COLLECTIVE_TIMEOUT_S="30"),
        second_worker={"RANK": "1"})  # RANK: the hook's, not MXNet's
    survivor = _survivor_stderr(processes, survivor=2, killed=3)
    lines = [line for line in survivor.splitlines() if line.strip()]
    assert len(lines) == 1 and "waited 30 s (W2V_COLLECTIVE_TIMEOUT_S)" in lines[0], lines
    assert "a dist_sync step" in lines[0] and "checkpoint" in lines[0]
    checkpoint = runs.load_checkpoint(run)
    assert checkpoint.position == {**checkpoint.position, "epoch": 1, "batch": 0}
    assert not list(run.glob(".*.tmp"))
    _dist_sync_ran(_dist_sync_launch(["train", "--resume", str(run), "--no-progress"]))
    assert main(_args(corpus, reference, "mxnet", "chapter", epochs=3)) == 0
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


def _killed_worker_survivor(backend: str, corpus: Path, run: Path, epochs: int) -> str:
    """The README's two-process launch of `backend` (tf, jax), process 1 SIGKILLed in epoch 2:
    process 0's stderr once it ended (exit 75), the epoch-1 checkpoint intact."""
    PORTS[:] = [str(_free_port()), str(_free_port())]
    processes = []
    for process in range(2):
        command, env = _multi_process_env(backend, process)
        processes.append(subprocess.Popen(
            [*command, *_args(corpus, run, backend, "chapter", "--data-parallel", "2",
                              epochs=epochs)],
            cwd=ROOT, env=dict(os.environ, **env, **KILL_RANK_1, RANK=str(process)),  # the hook's
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    stderr = _survivor_stderr(processes, survivor=0, killed=1)
    checkpoint = runs.load_checkpoint(run)
    assert checkpoint.position == {**checkpoint.position, "epoch": 1, "batch": 0}
    assert not list(run.glob(".*.tmp"))
    return stderr


def test_a_killed_tf_config_worker_ends_the_other_in_one_line(tmp_path, corpus):
    """The README's TF_CONFIG launch, worker 1 SIGKILLed in epoch 2: worker 0's collective
    fails (TensorFlow's UnavailableError), which ends it with one line naming worker 1, no
    traceback, exit 75, and the epoch-1 checkpoint intact."""
    require_backend("tf")
    stderr = _killed_worker_survivor("tf", corpus, tmp_path / "run", epochs=3)
    lines = [line for line in stderr.splitlines() if line.startswith("w2v:")]
    assert len(lines) == 1 and "replica 1 went away" in lines[0], lines
    assert "Traceback" not in stderr and "is intact" in lines[0]


def test_a_killed_jax_distributed_process_ends_the_other_in_one_line(tmp_path, corpus):
    """The README's jax.distributed launch, process 1 SIGKILLed in epoch 2: process 0's next
    collective fails in gloo, which ends it with one line naming process 1, exit 75, no
    traceback and none of XLA's abort (its shutdown barrier would wait for the dead process),
    the epoch-1 checkpoint intact; `--resume` (two host devices in one process) then ends
    where an uninterrupted run ends."""
    require_backend("jax")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(_args(corpus, reference, "jax", "chapter", epochs=2)) == 0
    stderr = _killed_worker_survivor("jax", corpus, run, epochs=2)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("w2v: error: replica 1 went away (Gloo "), \
        lines
    assert "replica 0 stopped" in lines[0] and "is intact" in lines[0]
    resumed = _w2v(["train", "--resume", str(run), "--no-progress", "--query"])
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(_epoch_losses(run), _epoch_losses(reference), rtol=1e-4)


def test_the_replicas_benchmark_puts_n_beside_one_replica():
    from benchmarks.replicas import render

    rows = [{"backend": "torch", "step": "fast", "replicas": replicas,
             "centre_words_per_second": rate, "last_epoch_loss": 0.4272,
             "bytes_all_reduced_per_step": parallel.bytes_all_reduced(6719, 100) * (replicas > 1)}
            for replicas, rate in ((1, 120_000.0), (2, 30_000.0))]
    table = render(rows)
    assert table[2] == "| torch | fast | 1 | 120,000 | 1.00x | 0 | 0.4272 |"
    assert table[3] == "| torch | fast | 2 | 30,000 | 0.25x | 5.1 MiB (5,375,200) | 0.4272 |"


@pytest.mark.parametrize("settings, works", [
    (dict(backend="jax", optimizer="sgd"),
     "--optimizer sgd trains with --data-parallel 1, or with replicas on --backend torch"),
    (dict(backend="tf", optimizer="sparse_adam"),
     "--optimizer sparse_adam trains with --data-parallel 1, or with replicas on --backend torch"),
    (dict(backend="torch", optimizer="sgd", model="cbow"),
     "--optimizer sgd trains it with --data-parallel 1"),
])
def test_replicas_refuse_what_no_parity_test_covers_naming_what_works(settings, works):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(data_parallel=2, **settings).validate()
    assert works in str(caught.value) and "\n" not in str(caught.value)
    TrainConfig(data_parallel=1, **settings).validate()  # one replica trains them
    for model, loss in VARIANT_COMBINATIONS:  # every combination trains with replicas
        TrainConfig(data_parallel=2, model=model, loss=loss).validate()


@pytest.mark.parametrize("optimizer", ["sparse_adam", "sgd"])
def test_torchs_replicas_take_the_sparse_optimisers(optimizer):
    """gloo all-reduces sparse gradients: torch's replicas train them (parity test above)."""
    TrainConfig(backend="torch", data_parallel=2, optimizer=optimizer).validate()
