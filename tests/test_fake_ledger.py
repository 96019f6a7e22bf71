"""The tensor ledger on a few hand-made fake tensors, and the log readers on hand-built entries."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from freezelab.memory.cuda_facts import CUBLASLT_WORKSPACE
from freezelab.memory.fake import log
from freezelab.memory.fake.ledger import Entry, Label, TensorLedger
from freezelab.memory.result import Category, Phase

MiB = 2**20
CUBLAS_SM90 = 32 * MiB


def test_storages_are_booked_in_512_byte_blocks_and_freed_with_their_last_reference() -> None:
    led = TensorLedger()
    with FakeTensorMode(), led:
        a = torch.empty(100)                          # 400 B
        b = torch.empty(1000, dtype=torch.bfloat16)   # 2000 B
        view = b[:10]                                 # same storage: nothing new
        c = a + a
        del c
        assert led.total == 512 + 2048
        led.category, led.component = Category.WEIGHTS, Label.PROJECTOR
        d = torch.empty(0)                            # empty: booked as 0
    assert [(e.nbytes, e.cat, e.comp, e.t0, e.t1) for e in led.entries] == [
        (512, Category.ACTIVATIONS, Label.OTHER, 1, None),
        (2048, Category.ACTIVATIONS, Label.OTHER, 2, None),
        (512, Category.ACTIVATIONS, Label.OTHER, 3, 4),
        (0, Category.WEIGHTS, Label.PROJECTOR, 5, None)]
    assert led.peak == 3072 and led.peak_t == 3
    assert view.shape == (10,) and a.shape == (100,) and d.numel() == 0


def test_cublas_workspaces_one_per_thread_and_cublaslt_for_a_bias_addmm() -> None:
    led = TensorLedger()
    with FakeTensorMode(), led:
        x, w, bias = torch.empty(4, 8), torch.empty(8, 8), torch.empty(8)
        x @ w                                          # first GEMM on the main thread: 32 MiB
        x @ w                                          # same thread: no second one
        torch.nn.functional.linear(x, w, bias)         # addmm with a bias epilogue: cuBLASLt's 1 MiB
        led.set_phase(Phase.BACKWARD)
        x @ w                                          # autograd's device thread: its own 32 MiB
    ws = [(e.nbytes, e.comp, e.phase) for e in led.entries if e.cat == Category.WORKSPACE]
    assert ws == [(CUBLAS_SM90, Label.CUBLAS, Phase.SETUP), (CUBLASLT_WORKSPACE, Label.CUBLASLT, Phase.SETUP),
                  (CUBLAS_SM90, Label.CUBLAS, Phase.BACKWARD)]
    # ticks: x, w, bias, cuBLAS, two mm outputs made and dropped, cuBLASLt, the addmm's output and
    # its drop (11), then the backward's workspace
    assert led.phase_marks == [(0, Phase.SETUP), (11, Phase.BACKWARD)]


def test_classify_exclude_and_typos() -> None:
    led = TensorLedger()
    with FakeTensorMode(), led:
        g = torch.empty(1000)                          # 4000 B -> 4096
        step = torch.empty(())                         # 4 B -> 512
        led.classify(g, Category.GRADIENTS, Label.LLM)
        led.exclude(step)                              # lives on the host in the real run
        assert led.total == 4096
        with pytest.raises(ValueError):
            led.category = "activation"                # not a category
        with pytest.raises(ValueError):
            led.classify(g, "gradient")
        with pytest.raises(ValueError):
            led.component = "vison"
    assert [(e.nbytes, e.cat, e.comp) for e in led.entries] == [
        (4096, Category.GRADIENTS, Label.LLM), (0, Category.ACTIVATIONS, Label.OTHER)]


def test_foreach_ops_book_their_outputs_without_running() -> None:
    led = TensorLedger()
    with FakeTensorMode(), led:
        ts = [torch.empty(100), torch.empty(300)]
        outs = torch._foreach_sqrt(ts)                 # like AdamW's exp_avg_sq.sqrt(): new tensors
        torch._foreach_add_(ts, 1.0)                   # in place: nothing
    assert [e.nbytes for e in led.entries] == [512, 1536, 512, 1536]
    assert [o.shape for o in outs] == [(100,), (300,)]


# -- reading the log --------------------------------------------------------------------------------

def e(nbytes: int, cat: Category, comp: Label, t0: int, t1: int | None) -> Entry:
    out = Entry(nbytes, cat, comp, t0, Phase.FORWARD)
    out.t1 = t1
    return out


W, G, A, L = Category.WEIGHTS, Category.GRADIENTS, Category.ACTIVATIONS, Category.LOGITS_LOSS
ENTRIES = [
    e(1000, W, Label.LLM, 1, None),          # weights, forever
    e(300, A, Label.VISION, 2, 6),           # forward activations, freed in backward
    e(200, A, Label.LLM, 3, 5),
    e(400, L, Label.LM_HEAD, 4, 7),          # logits
    e(600, G, Label.LLM, 5, None),           # a gradient
    e(100, A, Label.OTHER, 8, 9),            # an optimizer-phase temporary
]
MARKS = [(0, Phase.SETUP), (1, Phase.FORWARD), (4, Phase.BACKWARD), (7, Phase.OPTIMIZER)]


def test_breakdown_at_a_tick() -> None:
    cats, comps = log.breakdown_at(ENTRIES, 4)
    assert cats == {W: 1000, A: 500, L: 400}
    assert comps == {Label.VISION: 300, Label.LLM: 200}
    # with the blocks the allocator handed out instead of the requests
    cats, _ = log.breakdown_at(ENTRIES, 5, sizes={id(ENTRIES[4]): 1024})
    assert cats == {W: 1000, A: 300, L: 400, G: 1024}


def test_phase_at_window_peak_and_phase_peaks() -> None:
    assert [log.phase_at(MARKS, t) for t in (1, 2, 4, 5, 8)] == [
        Phase.SETUP, Phase.FORWARD, Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER]
    # totals by tick: 1000, 1300, 1500, 1900, 2300 (t5: +600 -200), 2000, 1600, 1700, 1600
    assert log.window_peak(ENTRIES, 1, 5) == 1900
    assert log.window_peak(ENTRIES, 7, 99) == 1700
    assert log.phase_peaks(ENTRIES, MARKS, since=0) == {
        Phase.SETUP: (1000, 1), Phase.FORWARD: (1900, 4), Phase.BACKWARD: (2300, 5), Phase.OPTIMIZER: (1700, 8)}
    assert log.count_alive(ENTRIES, 5, Label.LLM) == 2


def test_scaled_peak_moves_with_the_scaling() -> None:
    assert log.scaled_peak(ENTRIES, MARKS, {}, since=0) == (2300, 5)
    # weights and gradients divided by 4: the end of the forward wins, 250 + 500 + 400 (t5: 1100)
    assert log.scaled_peak(ENTRIES, MARKS, {W: 0.25, G: 0.25}, since=0) == (1150, 4)
    # plus 1000 bytes during the backward (e.g. gathered weights): back to t5
    extra = {Phase.BACKWARD: {W: 1000.0}}
    assert log.scaled_peak(ENTRIES, MARKS, {W: 0.25, G: 0.25}, since=0,
                           extra=lambda ph: extra.get(ph, {})) == (2100, 5)
    assert log.scaled_peak(ENTRIES, MARKS, {}, since=6) == (2000, 6)
