"""The sanity step through FSDP2 and DDP: in this process as a group of one (every family, sharded
loading, failures as one line), and under torchrun with two CPU ranks (the CI run, sharded loading of
a safetensors checkpoint, a rank that raises, runs out of memory or dies, a rendezvous that times out)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny_configs import config, write

import freezelab.step.train as train_module
from freezelab.checks import Check
from freezelab.cli import main
from freezelab.models import build
from freezelab.plans import preset
from freezelab.sources import resolve as resolve_source
from freezelab.step import StepError, run_step
from freezelab.step.ranks import agreement
from freezelab.step.sharded import run_sharded_step
from freezelab.step.world import DistributedError, RankFailed, plan_world
from freezelab.workload import Workload

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BIN = Path(sys.executable).parent
# --standalone: a free rendezvous port, so two runs on one machine never meet on the default 29500
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--monitor-interval", "0.1"]
FP32 = Workload(dtype="fp32")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    """These tests make their own groups; a launcher's variables in the test's environment must not leak in."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _one(sharding: str, **changes) -> Workload:
    return FP32.with_(sharding=sharding, **changes)


def _failed(report) -> set[str]:
    return {name for name, c in report.checks.items() if not c.passed}


# -- a group of one, in this process -----------------------------------------------------

@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
def test_a_group_of_one_passes_and_leaves_no_process_group(tiny_source, sharding):
    report = run_sharded_step(tiny_source, preset("stage2"), _one(sharding), plan_world("cpu", 30))
    assert report.passed and _failed(report) == set()
    assert not dist.is_initialized()
    d = report.distributed
    assert d["world_size"] == 1 and d["sharding"] == sharding and d["backend"] == "gloo"
    assert [r["rank"] for r in d["ranks"]] == [0] and d["ranks"][0]["peak_rss_bytes"] > 100 * 2**20
    assert report.checks["ranks_agree"].passed


@pytest.mark.parametrize("kind", ["llava-tied", "onevision", "next", "vipllava"])
def test_fsdp_on_every_family_trains_exactly_the_plan(tmp_path, kind):
    source = resolve_source(str(write(tmp_path, kind)))
    report = run_sharded_step(source, preset("last-2"), _one("fsdp"), plan_world("cpu", 30))
    assert report.passed, {n: c.message for n, c in report.checks.items() if not c.passed}
    plain = run_step(source, preset("last-2"), FP32)
    assert report.trainable_params == plain.trainable_params and report.trainable_tensors == plain.trainable_tensors


def test_fsdp_shards_every_layer_then_the_root(tiny_source):
    from torch.distributed.fsdp import FSDPModule

    seen = {}

    def look(model, optimizer):
        seen["units"] = sorted(name for name, m in model.named_modules() if isinstance(m, FSDPModule))
        seen["dtensors"] = {type(p).__name__ for p in model.parameters()}

    report = run_sharded_step(tiny_source, preset("stage1"), _one("fsdp", grad_ckpt=True), plan_world("cpu", 30),
                              prepare=look)
    layers = [f"model.vision_tower.encoder.layers.{i}" for i in range(3)]
    layers += [f"model.language_model.layers.{i}" for i in range(4)]
    assert seen["units"] == sorted(["", *layers]) and seen["dtensors"] == {"DTensor"}
    assert report.passed


def test_fsdp_loads_a_checkpoint_as_the_single_device_step_does(tmp_path):
    build(resolve_source("tiny"), device="cpu", dtype="fp32", seed=5).save_pretrained(tmp_path,
                                                                                       max_shard_size="300KB")
    source = resolve_source(str(tmp_path))
    sharded = run_sharded_step(source, preset("stage1"), _one("fsdp"), plan_world("cpu", 30), weights=True)
    plain = run_step(source, preset("stage1"), FP32, weights=True)
    assert sharded.weights == plain.weights == "checkpoint" and sharded.passed
    assert [s.loss for s in sharded.steps] == pytest.approx([s.loss for s in plain.steps], rel=1e-6)


def test_out_of_memory_is_one_line_naming_the_rank(tiny_source, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "_train_step", oom)
    with pytest.raises(RankFailed, match=r"^rank 0 of 1: out of memory in step 1; the estimate was") as err:
        run_sharded_step(tiny_source, preset("stage2"), _one("fsdp"), plan_world("cpu", 30))
    assert "\n" not in str(err.value) and not dist.is_initialized()


@pytest.mark.parametrize(("workload", "message"), [
    (FP32.with_(sharding="zero3"), "runs FSDP2 (fsdp) or DDP (ddp), not zero3"),
    (FP32.with_(sharding="ddp", offload_optimizer=True), "optimizer offload runs with --sharding fsdp"),
    (FP32.with_(sharding="fsdp", gpus=2), "the workload says 2 GPUs but 1 ranks run"),
])
def test_bad_sharded_options_are_refused_naming_the_rank(tiny_source, workload, message):
    with pytest.raises(StepError, match=r"^rank 0 of 1: .*" + re.escape(message)):
        run_sharded_step(tiny_source, preset("stage2"), workload, plan_world("cpu", 30))
    assert not dist.is_initialized()


def test_the_launchers_variables_are_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = plan_world("cuda", 30)
    assert (world.rank, world.size, world.device, world.backend, world.name) == (3, 4, "cuda:1", "nccl", "rank 3 of 4")
    with pytest.raises(DistributedError, match="each rank uses the GPU of its local rank"):
        plan_world("cuda:0", 30)
    with pytest.raises(DistributedError, match="between 1 and"):
        plan_world("cpu", 0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(DistributedError, match="do not describe a process group"):
        plan_world("cpu", 30)


def test_ranks_agree_names_the_ranks_that_differ():
    base = {"rank": 0, "weights_digest": "a", "checks": {"x": True}, "trainable_params": 5, "status": "ok"}
    same, other = {**base, "rank": 1}, {**base, "rank": 2, "weights_digest": "b", "checks": {"x": False}}
    assert agreement([base, same]) == Check("ranks_agree", True, "failure",
                                            "all 2 ranks ended with identical weights and identical check results")
    check = agreement([base, same, other])
    assert not check.passed and check.offending == ("rank 2",) and check.count == 1
    assert check.causes["rank 2"] == "differs from rank 0 in weights, check results"


def test_a_single_process_step_refuses_offload_without_sharding(capsys):
    assert main(["step", "tiny", "--offload-optimizer"]) == 2
    assert capsys.readouterr().err.strip() == "error: --offload-optimizer needs --sharding fsdp"


# -- two ranks under torchrun --------------------------------------------------------------

def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = f"{PYTHON_BIN}:{env.get('PATH', '')}"
    return subprocess.run([*TORCHRUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_two_cpu_ranks_pass_every_check_with_per_rank_peaks():
    run = _torchrun("-m", "freezelab", "step", "tiny", "--preset", "stage2", "--sharding", "fsdp", "--device", "cpu",
                    "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(run.stdout)
    assert data["passed"] is True and all(c["passed"] for c in data["checks"].values())
    ranks = data["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and data["distributed"]["world_size"] == 2
    assert all(r["passed"] and all(r["checks"].values()) for r in ranks)
    assert all(r["peak_rss_bytes"] > 100 * 2**20 and r["estimate_bytes"] == data["estimate"]["peak_bytes"]
               for r in ranks)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank its own batch
    assert data["workload"]["gpus"] == 2 and data["workload"]["sharding"] == "fsdp"


def test_two_ranks_each_read_their_rows_of_a_checkpoint(tmp_path):
    saved = build(resolve_source("tiny"), device="cpu", dtype="fp32", seed=9)
    saved.save_pretrained(tmp_path, max_shard_size="300KB")
    plain = run_step(resolve_source(str(tmp_path)), preset("stage2"), FP32, weights=True)
    run = _torchrun("-m", "freezelab", "step", str(tmp_path), "--weights", "--preset", "stage2", "--sharding",
                    "fsdp", "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(run.stdout)
    assert data["weights"] == "checkpoint" and data["passed"]
    # rank 0's batch is the single-device batch: the same weights give the same first loss, up to fp32
    # rounding (FSDP2 computes with views of its all-gather buffer, whose alignment can change the CPU
    # kernels' summation order: 4e-6 relative seen on a CI machine)
    assert data["distributed"]["ranks"][0]["losses"][0] == pytest.approx(plain.steps[0].loss, rel=2e-5)


@pytest.mark.parametrize(("fault", "line"), [
    ("raise", "error: rank 1 of 2: ValueError: injected fault"),
    ("kill", "error: rank 0 of 2: stopped by the launcher"),
])
def test_a_failing_rank_is_one_line_and_nothing_hangs(fault, line):
    started = time.monotonic()
    run = _torchrun("tests/sharded_fault.py", fault, "1", "--", "step", "tiny", "--preset", "stage2", "--sharding",
                    "fsdp", "--device", "cpu", "--dist-timeout", "60")
    assert run.returncode != 0 and run.stdout == ""
    errors = _errors(run.stderr)
    assert any(e.startswith(line) for e in errors), run.stderr[-2000:]
    assert len(errors) <= 2 and all(e.startswith(("error: rank 0 of 2: ", "error: rank 1 of 2: ")) for e in errors)
    assert time.monotonic() - started < 60  # torchrun ends the survivor long before its collective timeout


def test_a_rendezvous_that_never_completes_times_out_in_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    run = subprocess.run([sys.executable, "-m", "freezelab", "step", "tiny", "--sharding", "ddp", "--dist-timeout",
                          "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert _errors(run.stderr) == [line for line in run.stderr.splitlines() if line.strip()]
    (error,) = _errors(run.stderr)
    assert error.startswith(f"error: rank 0 of 2: the rendezvous at 127.0.0.1:{port} did not complete within 2 s")
