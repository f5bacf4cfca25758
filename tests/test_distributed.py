"""Training anywhere: devices and precision, DDP and parallel ensembles through torch.distributed.

Every process group here is gloo on 127.0.0.1, started by torchrun inside the test and bounded in
time; the data are a few thousand real MNIST images and the nets are narrow, so each run takes
seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from digitrec.nets.augment import apply_transforms, sample_transforms
from digitrec.cli import main
from digitrec.core.config import make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.nets.augment import to_float
from digitrec.nets.predict import evaluate_run
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve
from digitrec.training.train import fit

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
DIGITREC = [sys.executable, "-m", "digitrec"]
LIMIT_S = 180  # no run here may take longer; a hang fails the test instead of the suite
# a narrow fast net, 3 epochs of 94 steps of 32: each epoch lasts long enough to be killed in
FAST = ["--preset", "fast", "--width", "8", "--epochs", "3", "--batch-size", "32", "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _run(cmd, cwd=None, timeout=LIMIT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory, mnist_train) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    write_kaggle_csv(path, mnist_train.subset(np.arange(3008), "mnist:train[:3008]"), with_labels=True)
    return path


# ---------------------------------------------------------------------------------------------
# one process: recipe apart from runtime, nothing process-wide changed, devices


def test_fit_leaves_the_process_as_it_found_it(tmp_path, small_train):
    torch.manual_seed(123)
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    fit(make_config("fast", width=8, epochs=1), small_train.subset(np.arange(1024)), tmp_path / "run", quiet=True)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


def test_resume_compares_the_recipe_not_the_runtime(tmp_path, small_train):
    data = small_train.subset(np.arange(1024))
    cfg = make_config("fast", width=8, epochs=1)
    fit(cfg, data, tmp_path / "run", quiet=True, runtime=resolve(RuntimeConfig(eval_batch_size=100)))
    (tmp_path / "run" / "model.safetensors").unlink()  # as if killed after its last checkpoint
    other_runtime = resolve(RuntimeConfig(eval_batch_size=7, channels_last=False))
    metrics = fit(cfg, data, tmp_path / "run", resume=True, quiet=True, runtime=other_runtime)
    assert metrics["runtime"]["channels_last"] is False
    assert "eval_batch_size" not in json.loads((tmp_path / "run" / "config.json").read_text())


def test_a_run_folder_from_before_the_split_still_evaluates_and_resumes(tmp_path, small_train, mnist_test):
    """config.json of 0.1 held threads, eval_batch_size, channels_last, compile and no val_split."""
    data = small_train.subset(np.arange(600))
    cfg = make_config(epochs=1, val_split="numpy")
    fit(cfg, data, tmp_path / "old", quiet=True)
    config_path = tmp_path / "old" / "config.json"
    legacy = {k: v for k, v in json.loads(config_path.read_text()).items() if k != "val_split"}
    config_path.write_text(json.dumps(legacy | {"threads": 2, "eval_batch_size": 1000, "channels_last": True,
                                                "compile": False}))
    before = _weights(tmp_path / "old")
    (tmp_path / "old" / "model.safetensors").unlink()
    metrics = fit(make_config(epochs=1, val_split="numpy"), data, tmp_path / "old", resume=True, quiet=True)
    assert metrics["n_val"] == 60 and _same(_weights(tmp_path / "old"), before)
    assert evaluate_run(tmp_path / "old", mnist_test.subset(np.arange(100))).probs.shape == (100, 10)


def test_validation_images_are_sklearns_train_test_split():
    from sklearn.model_selection import train_test_split

    from digitrec.core.splits import split_validation

    for n in (1000, 42_000):
        labels = np.zeros(n, dtype=np.int64)
        train, val = split_validation(labels, make_config())
        sk_train, sk_val = train_test_split(np.arange(n), test_size=0.1, random_state=2)
        assert np.array_equal(val, np.sort(sk_val)) and np.array_equal(train, np.sort(sk_train))


def test_ranks_augment_the_global_batch_as_one_process_does(small_train):
    """Every rank draws the whole batch's transforms and applies its share: the same images as W=1."""
    x = to_float(small_train.images[:64])
    transforms = sample_transforms(64, make_config(elastic_alpha=34.0), torch.Generator().manual_seed(0))
    whole = apply_transforms(x, *transforms)
    for share in torch.tensor_split(torch.arange(64), 2):
        assert torch.equal(apply_transforms(x[share], *(t[share] for t in transforms)), whole[share])


def test_the_schedule_steps_where_its_kind_says():
    from digitrec.training.optim import Schedule

    for schedule, per_batch in (("onecycle", True), ("plateau", False), ("constant", False)):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = Schedule(optimizer, make_config(schedule=schedule, plateau_patience=1), 10)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        steps.after_step()
        assert (optimizer.param_groups[0]["lr"] != lr) == per_batch
        lr = optimizer.param_groups[0]["lr"]
        steps.after_epoch(0.5)
        steps.after_epoch(0.5)  # a stalled epoch: plateau (patience 1) halves the rate
        assert (optimizer.param_groups[0]["lr"] != lr) == (schedule == "plateau")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has one")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_that_is_not_here_is_one_error_line(tmp_path, capsys, device):
    for launch in ([], ["--nproc", "2"]):  # one process, or the launcher before any worker starts
        assert main(["train", "--device", device, "--out", str(tmp_path / "run"), "--epochs", "1", *launch]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: device '{device}' is not available here (available: cpu)"
        assert not (tmp_path / "run").exists()


def test_auto_is_the_cpu_here_and_fp16_needs_cuda():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve(RuntimeConfig()).device == torch.device("cpu")
    assert resolve(RuntimeConfig(device="cpu")).precision == "fp32"
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device"):
        resolve(RuntimeConfig(device="cpu", precision="fp16"))
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, mps or cuda:N, not 'gpu'"):
        RuntimeConfig(device="gpu")


def test_a_bf16_run_trains_on_the_cpu_and_saves_fp32_weights(tmp_path, small_train, mnist_test):
    rt = resolve(RuntimeConfig(device="cpu", precision="bf16"))
    metrics = fit(make_config("fast", width=8, epochs=2), small_train, tmp_path / "bf16", quiet=True, runtime=rt)
    assert metrics["runtime"]["precision"] == "bf16"
    assert all(w.dtype == torch.float32 for w in _weights(tmp_path / "bf16").values() if w.is_floating_point())
    assert evaluate_run(tmp_path / "bf16", mnist_test.subset(np.arange(1000))).probs.argmax(1).mean() > 0  # runs
    history = (tmp_path / "bf16" / "history.csv").read_text().splitlines()
    assert float(history[2].split(",")[2]) > 0.6  # train accuracy of epoch 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests cover the same loop)")
def test_a_gpu_run_loads_on_the_cpu(tmp_path, small_train):
    rt = resolve(RuntimeConfig(device="cuda"))
    fit(make_config("fast", width=8, epochs=1), small_train, tmp_path / "gpu", quiet=True, runtime=rt)
    weights = _weights(tmp_path / "gpu")
    assert all(w.device.type == "cpu" for w in weights.values())
    from digitrec.nets.weights import load_run_model

    model, _, _ = load_run_model(tmp_path / "gpu")
    assert next(model.parameters()).device.type == "cpu"


def test_no_hard_coded_device_in_src():
    """Devices are chosen in runtime.py only (and distributed.py picks NCCL's); nothing else names one."""
    for path in (ROOT / "src" / "digitrec").glob("*.py"):
        if path.name in ("runtime.py", "distributed.py"):
            continue
        text = path.read_text()
        assert ".cuda(" not in text and not re.search(r"""["']cuda(:\d)?["']""", text), path.name


# ---------------------------------------------------------------------------------------------
# several processes: DistributedDataParallel


def _worker_weights(tmp_path, model: str, nproc: int) -> list[dict]:
    out = tmp_path / f"{model}-{nproc}"
    done = _run(TORCHRUN + ["--standalone", f"--nproc-per-node={nproc}", str(ROOT / "tests" / "ddp_worker.py"),
                            model, str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(nproc)]


def test_two_ranks_equal_one_at_the_same_global_batch(tmp_path):
    """No BatchNorm, no dropout: W=2 and W=1 differ only by float rounding of the split batch."""
    (one,), (rank0, rank1) = _worker_weights(tmp_path, "plain", 1), _worker_weights(tmp_path, "plain", 2)
    assert _same(rank0, rank1)
    for name in one:
        torch.testing.assert_close(rank0[name], one[name], rtol=1e-3, atol=2e-4)  # measured: 5e-5 at most


def test_batchnorm_ranks_end_equal(tmp_path):
    rank0, rank1 = _worker_weights(tmp_path, "fast", 2)
    assert _same(rank0, rank1)  # parameters by all-reduce, running statistics by fit's broadcast


def _kill_after_first_checkpoint(proc: subprocess.Popen, run_dir: Path, victim=None) -> None:
    """SIGKILL `victim` (a pid; default the whole process group) once epoch 1's checkpoint is written."""
    deadline = time.time() + LIMIT_S
    history = run_dir / "history.csv"
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint came"
        time.sleep(0.02)
    # the launcher and its torchrun workers (children in sessions of their own), or one victim
    victims = [victim()] if victim else _children(proc.pid) + [proc.pid]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    while any(_alive(pid) for pid in victims if pid != proc.pid):  # their run lock goes with them
        assert time.time() < deadline, "a killed worker lives on"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_ends_as_if_uninterrupted(tmp_path, train_csv):
    flags = FAST + ["--train", str(train_csv)]
    whole = _run(TORCHRUN + ["--standalone", "--nproc-per-node=2", "-m", "digitrec", "train", *flags,
                             "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]

    restarted = tmp_path / "restarted"
    proc = subprocess.Popen(TORCHRUN + ["--standalone", "--nproc-per-node=2", "--max-restarts=1", "-m", "digitrec",
                                        "train", *flags, "--out", str(restarted)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_after_first_checkpoint(proc, restarted, victim=lambda: max(_children(proc.pid)))
    out, _ = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 0, out[-3000:]
    assert "Worker group FAILED" in out or "restart" in out.lower()  # torchrun saw the death and restarted
    assert _same(_weights(restarted), _weights(tmp_path / "whole"))
    assert json.loads((restarted / "metrics.json").read_text())["runtime"]["world_size"] == 2


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_with_another_number_of_processes(tmp_path, train_csv, first, then):
    run_dir = tmp_path / "run"
    flags = FAST + ["--train", str(train_csv), "--out", str(run_dir)]
    proc = subprocess.Popen(DIGITREC + ["train", *flags, "--nproc", str(first)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_after_first_checkpoint(proc, run_dir)
    proc.wait(timeout=LIMIT_S)
    assert not (run_dir / "model.safetensors").exists(), "the run finished before it could be killed"
    epoch1 = (run_dir / "history.csv").read_text().splitlines()[1]

    done = _run(DIGITREC + ["train", *flags, "--resume", "--nproc", str(then)])
    assert done.returncode == 0, done.stderr[-3000:]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 4 and history[1] == epoch1  # epoch 1 kept, epochs 2-3 trained by the new group
    assert json.loads((run_dir / "metrics.json").read_text())["runtime"]["world_size"] == then


# ---------------------------------------------------------------------------------------------
# ensembles in parallel: one member per rank, on one machine or two


def test_a_parallel_ensemble_equals_the_sequential_one_and_resumes(tmp_path, train_csv):
    flags = FAST[:-1] + ["--epochs", "1", "--train", str(train_csv), "--ensemble", "3", "--threads", "1", "--quiet"]
    sequential = _run(DIGITREC + ["train", *flags, "--out", str(tmp_path / "seq")])
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    parallel = _run(DIGITREC + ["train", *flags, "--out", str(tmp_path / "par"), "--nproc", "2"])
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    for i in range(3):
        assert _same(_weights(tmp_path / "seq" / f"member-{i}"), _weights(tmp_path / "par" / f"member-{i}"))
    assert _same(_weights(tmp_path / "seq"), _weights(tmp_path / "par"))

    # interrupted: member 1 (rank 1's) never finished, nor the ensemble; member 0 did
    par = tmp_path / "par"
    member0 = {p.name: p.read_bytes() for p in (par / "member-0").iterdir()}
    for path in (par / "member-1" / "model.safetensors", par / "member-1" / "metrics.json",
                 par / "model.safetensors", par / "metrics.json"):
        path.unlink()
    resumed = _run(DIGITREC + ["train", *flags, "--out", str(par), "--nproc", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (par / "member-0").iterdir()} == member0  # kept as it was
    assert _same(_weights(par / "member-1"), _weights(tmp_path / "seq" / "member-1"))
    assert _same(_weights(par), _weights(tmp_path / "seq"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_end_with_the_whole_ensemble_on_rank_0(tmp_path, train_csv):
    """Two torchrun launchers (--nnodes 2, c10d rendezvous), each in its own folder with a relative
    --out, as two machines without a shared filesystem: rank 0's folder gets every member."""
    port = _free_port()
    launchers = []
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
        launchers.append(subprocess.Popen(
            TORCHRUN + ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                        "--rdzv-id=digitrec-test", "-m", "digitrec", "train", *FAST[:-1], "--epochs", "1",
                        "--train", str(train_csv), "--ensemble", "2", "--out", "ens", "--quiet"],
            cwd=tmp_path / node, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=LIMIT_S)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    finished = [node for node in ("a", "b") if (tmp_path / node / "ens" / "model.safetensors").is_file()]
    assert len(finished) == 1
    ensemble = tmp_path / finished[0] / "ens"
    for i in range(2):
        assert {"model.safetensors", "metrics.json", "config.json", "history.csv"} <= {
            p.name for p in (ensemble / f"member-{i}").iterdir()}
    assert len(json.loads((ensemble / "metrics.json").read_text())["members"]) == 2


# ---------------------------------------------------------------------------------------------
# bad input: found before any process group, one error line, quickly


@pytest.mark.parametrize("launch", ["torchrun", "nproc"])
def test_bad_input_under_several_processes_is_an_error_line_within_a_minute(tmp_path, launch):
    bad = tmp_path / "train.csv"
    bad.write_text("label,pixel0\n3,x\n")
    args = ["train", "--train", str(bad), "--out", str(tmp_path / "run"), "--quiet"]
    cmd = (TORCHRUN + ["--standalone", "--nproc-per-node=2", "-m", "digitrec", *args] if launch == "torchrun"
           else DIGITREC + args + ["--nproc", "2"])
    start = time.time()
    done = _run(cmd, timeout=60)
    assert done.returncode != 0 and time.time() - start < 60
    assert re.search(rf"^error: {re.escape(str(bad))}: .*", done.stderr, re.MULTILINE), done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_an_occupied_out_or_an_indivisible_batch_stops_before_any_worker_starts(tmp_path, train_csv, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"x")
    base = ["train", *FAST, "--train", str(train_csv), "--nproc", "2"]
    assert main(base + ["--out", str(tmp_path / "run")]) == 2
    assert "already holds a run; use --resume or another --out" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "new"), "--batch-size", "33"]) == 2
    assert "batch_size 33 is the global batch: it must divide among 2 processes" in capsys.readouterr().err
    assert main(base) == 2
    assert "several processes need --out RUN_DIR" in capsys.readouterr().err
