"""Sharded memory: FSDP2's buffers in the analytic estimate (freezelab.memory.fsdp2) by hand from the tiny
config's shapes, the simulation that runs FSDP2 itself on torch's fake process group, and how many GPUs
a plan needs."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_simulate import PROJECTOR, buffer_bytes, llm_shapes, r512, tiny_config, vision_shapes

from freezelab.errors import SimulationError
from freezelab.memory import fsdp2
from freezelab.memory.analytic import estimate, spread_peaks
from freezelab.memory.fake.ledger import TensorLedger
from freezelab.memory.gpu_count import COUNTS, gpu_count
from freezelab.memory.gpus import GPUS
from freezelab.memory.simulate import simulate_step
from freezelab.plans import Plan, Rule, resolve
from freezelab.workload import Workload

BF16 = 2
PROJECTOR_SHAPES = [(64, 32), (64,), (64, 64), (64,)]   # linear_1 and linear_2 of the tiny projector


def rows(shape: tuple[int, ...], n: int) -> int:
    """By hand: ceil(dim0 / n) rows of the rest, as torch.chunk pads FSDP2's shards."""
    rest = 1
    for d in shape[1:]:
        rest *= d
    return -(-shape[0] // n) * rest


@pytest.fixture(scope="module")
def index(shipped_indexes):
    from freezelab.models import index_of
    from freezelab.sources import resolve as resolve_source

    return index_of(resolve_source("tiny"))


def projector_mask(index) -> list[bool]:
    return resolve(Plan(rules=(Rule("train", "@projector"),)), index).mask


# -- the analytic side, by hand ------------------------------------------------------------------

def test_padded_rows_follow_torch_chunk():
    assert fsdp2.padded_rows((10, 3), 4) == 9          # 3 rows of 3
    assert fsdp2.padded_rows((5,), 8) == 1             # rank 0 still holds one row
    assert fsdp2.padded_rows((), 4) == 1


def test_a_decoder_layer_unit_by_hand(index):
    # q 64x64, k and v 32x64, o 64x64, gate and up 128x64, down 64x128, two norms of 64; 4 ranks, bf16
    unit = fsdp2.units(index, BF16, 4)["llm.layers.0"]
    assert unit.flat == r512((1024 + 512 + 512 + 1024 + 2048 * 3 + 16 * 2) * 4 * BF16) == 74240
    assert unit.unsharded == 8192 + 4096 + 4096 + 8192 + 16384 * 3 + 512 * 2 == 74752
    assert unit.shards == 2048 + 1024 + 1024 + 2048 + 4096 * 3 + 512 * 2 == 19456
    names = {fsdp2.unit_of(index, i) for i in range(len(index.params))}
    assert names == {"root", *(f"vision.layers.{i}" for i in range(3)), *(f"llm.layers.{i}" for i in range(4))}


def test_the_state_machine_gathers_prefetches_and_reduces(index):
    mask = projector_mask(index)
    fs = fsdp2.Fsdp2(index, mask, BF16, 4, reshard_after_forward=True, offload=False)
    u = fs.units
    root, l0, l1 = u["root"], u["llm.layers.0"], u["llm.layers.1"]
    (start,) = fs.forward_start()
    assert start.weights == root.unsharded + root.flat and start.grads == 0
    (copy_out,) = fs.enter("llm.layers.0")                       # root's flat buffer still alive
    assert copy_out.weights == root.unsharded + root.flat + l0.unsharded + l0.flat
    assert fs.now().weights == root.unsharded + l0.unsharded + l0.flat
    fs.leave("llm.layers.0")
    assert fs.now().weights == root.unsharded + l0.flat            # resharded; its flat waits for the next
    fs.enter("llm.layers.1")
    fs.leave("llm.layers.1")
    fs.forward_end()
    assert fs.now().weights == root.unsharded
    fs.backward_start()                                           # the root prefetches the last unit
    assert fs.now().weights == root.unsharded + l1.flat
    fs.backward_enter("llm.layers.1")                             # copy-out, then prefetch layer 0
    assert fs.now().weights == root.unsharded + l1.unsharded + l0.flat
    fs.backward_leave("llm.layers.1", lambda i: False)             # nothing trainable in it: nothing to reduce
    assert fs.now() == fsdp2.Gathered(root.unsharded + l0.flat, 0)
    fs.produced("root", 4096)
    projector = [i for i, on in enumerate(mask) if on]
    (reduce,) = fs.backward_end(lambda i: i in projector)
    rs_rows = sum(rows(s, 4) for s in PROJECTOR_SHAPES)
    assert reduce.grads == 4096 + r512(rs_rows * 4 * BF16)       # unsharded grads and the reduce-scatter input
    assert fs.now() == fsdp2.Gathered(0, r512(rs_rows * BF16))     # one flat buffer of sharded gradients


def test_zero2_keeps_every_unit_gathered_until_its_backward(index):
    fs = fsdp2.Fsdp2(index, projector_mask(index), BF16, 4, reshard_after_forward=False, offload=False)
    fs.forward_start()
    for name in ("vision.layers.0", "llm.layers.0"):
        fs.enter(name)
        fs.leave(name)
    fs.forward_end()
    u = fs.units
    assert fs.now().weights == u["root"].unsharded + u["vision.layers.0"].unsharded + u["llm.layers.0"].unsharded
    fs.backward_start()                                           # nothing to prefetch: all gathered
    assert fs.now().weights == u["root"].unsharded + u["vision.layers.0"].unsharded + u["llm.layers.0"].unsharded


# -- analytic and simulated, exact at the optimizer step -----------------------------------------

def shard_bytes(n: int) -> int:
    shapes = [*vision_shapes(), *PROJECTOR_SHAPES, *llm_shapes(), (512, 64)]   # lm_head last
    return sum(r512(rows(s, n) * BF16) for s in shapes) + buffer_bytes()


@pytest.mark.parametrize("sharding", ["zero2", "zero3", "fsdp"])
def test_shards_sharded_gradients_and_state_by_hand(index, sharding):
    """At the optimizer step nothing is gathered: every parameter's padded shard, one flat buffer of the
    projector's sharded gradients, AdamW's two moments of its shards; the same in both estimators."""
    n = 4
    w = Workload(batch=1, text_tokens=16, gpus=n, sharding=sharding)
    sim = simulate_step(tiny_config(), set(PROJECTOR), w)
    at_step = sim.details["step2_phase_peaks"]["optimizer"]["breakdown"]
    grads = r512(sum(rows(s, n) for s in PROJECTOR_SHAPES) * BF16)
    state = 2 * sum(r512(rows(s, n) * BF16) for s in PROJECTOR_SHAPES)
    assert (at_step["weights"], at_step["gradients"], at_step["optimizer_state"]) == (shard_bytes(n), grads, state)
    ana = next(m for m in estimate_moments(index, w) if m.phase == "optimizer")
    assert (ana.parts["weights"], ana.parts["gradients"], ana.parts["optimizer_state"]) == (shard_bytes(n), grads,
                                                                                            state)
    # the peaks: within a few 512-byte blocks (small tensors of FSDP2's own bookkeeping) of 66 MiB
    assert abs(sim.peak_bytes - estimate(index, projector_mask(index), w).peak_bytes) <= 16 * 1024


def estimate_moments(index, w):
    from freezelab.memory import analytic

    st = analytic._step(index, projector_mask(index), w, None)
    return analytic._walk(index, projector_mask(index), w, st)[1].moments


def test_fsdp_offload_keeps_shards_and_sharded_gradients_in_host_memory(index):
    w = Workload(batch=1, text_tokens=16, gpus=8, sharding="fsdp", offload_optimizer=True)
    est = estimate(index, projector_mask(index), w)
    sim = simulate_step(tiny_config(), set(PROJECTOR), w)
    assert est.details["cpu_ram_bytes"] > 0 and sim.breakdown["optimizer_state"] == 0
    at_step = sim.details["step2_phase_peaks"]["optimizer"]["breakdown"]
    ana = next(m for m in estimate_moments(index, w) if m.phase == "optimizer")
    for parts in (at_step, ana.parts):             # only the buffers are left on the GPU between steps
        assert (parts["weights"], parts["gradients"]) == (buffer_bytes(), 0)
    assert est.breakdown["gradients"] == sim.breakdown["gradients"] == 0


def test_the_simulation_leaves_no_process_group_and_restores_resize():
    resize = torch.UntypedStorage.resize_
    simulate_step(tiny_config(), set(PROJECTOR), Workload(batch=1, text_tokens=8, gpus=2, sharding="zero3"))
    assert not dist.is_initialized() and torch.UntypedStorage.resize_ is resize


def test_a_process_group_already_there_is_refused_and_kept():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(SimulationError, match="process group is already initialised"):
            simulate_step(tiny_config(), set(PROJECTOR), Workload(batch=1, text_tokens=8, gpus=2, sharding="fsdp"))
        assert dist.is_initialized() and dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_the_ledger_books_storage_resizes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ledger = TensorLedger()
    with FakeTensorMode():
        t = torch.empty(1000, dtype=torch.bfloat16)
        with ledger:
            ledger.track(t, "weights")
            st = t.untyped_storage()
            assert ledger.total == 2048
            st.resize_(0)
            ledger.resized(st)
            assert ledger.total == 0
            st.resize_(4000)
            ledger.resized(st, "gradients")
            assert ledger.total == 4096 and ledger.entries[-1].cat == "gradients"


# -- how many GPUs ---------------------------------------------------------------------------------

def test_spread_peaks_equal_the_estimates(index):
    mask = projector_mask(index)
    w = Workload(batch=2, text_tokens=32)
    spreads = [w.with_(gpus=n, sharding=m) for m in ("ddp", "zero1", "zero3") for n in (1, 4)]
    assert spread_peaks(index, mask, w, spreads) == [estimate(index, mask, s).peak_bytes for s in spreads]


def test_gpu_count_finds_the_smallest_card_count(shipped_indexes):
    from freezelab.memory.device_figure import cache_share_of
    from freezelab.memory.gpus import device_bytes_on
    from freezelab.memory.verdict import judge

    index = shipped_indexes["llava-1.5-7b"]
    mask = resolve(Plan(rules=(Rule("train", "@llm"),)), index).mask
    w = Workload(batch=4, text_tokens=448)
    one = estimate(index, mask, w)
    count = gpu_count(index, mask, w, cache_share=cache_share_of(one))
    assert count.per_gpu["ddp"][0] == one.device_estimate_bytes   # one GPU: the estimate's own figure
    assert count.counts == COUNTS and set(count.smallest) == {"ddp", "zero1", "zero2", "zero3", "fsdp"}
    zero3 = count.per_gpu["zero3"]
    assert all(a >= b for a, b in zip(zero3, zero3[1:]))          # never grows with N
    assert count.per_gpu["ddp"][1:] == [count.per_gpu["ddp"][1]] * (len(COUNTS) - 1)
    assert count.per_gpu["fsdp"] == zero3                         # the same engine without offload
    card = next(g for g in GPUS if g.name == "A100 40 GB")
    n = count.smallest["zero3"][card.name]
    assert n == 4                                                 # 2 x 40 GB is not enough, 4 is
    for gpus, fits in ((n, True), (n // 2, False)):
        est = estimate(index, mask, w.with_(gpus=gpus, sharding="zero3"))   # fits: with the measured error
        assert judge(device_bytes_on(est, card.arch), card.total_bytes, est.method).fits == fits
    assert count.smallest["ddp"][card.name] is None               # DDP never shrinks the step


def test_estimate_reports_how_many_gpus(capsys):
    import json

    from freezelab.cli import main

    assert main(["estimate", "llava-1.5-7b", "--train", "@llm", "--batch", "4", "--text-tokens", "448", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    count = data["gpu_count"]
    assert count["counts"] == list(COUNTS) and count["smallest"]["zero3"]["A100 40 GB"] == 4
    assert count["smallest"]["ddp"]["A100 40 GB"] is None and count["smallest"]["ddp"]["H100 80 GB"] == 1
    assert count["per_gpu_device_bytes"]["zero3"]["1"] == data["device_estimate_bytes"]
