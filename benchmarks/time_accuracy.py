"""Estimated training time against the training times at hand.

    python benchmarks/time_accuracy.py [--mfu F] [--bandwidth-efficiency F] [--network-efficiency F]
                                       [--rows FILE.jsonl ...]

Two kinds of row:

* published training times: the LLaVA README (github.com/haotian-liu/LLaVA, README.md) gives
  wall-clock hours for LLaVA-v1.5's two stages, with the scripts that ran them
  (scripts/v1_5/pretrain.sh, finetune.sh). Each row is rebuilt as a freezelab plan and workload
  from those scripts; what the scripts do not say (tokens per sample) is an assumption, stated
  below with where it comes from. The estimate is steps x estimated step time on 8 GPUs.
* measured step times: rows of GPU measurements (the calibration format, see
  freezelab.memory.measured) that also carry `device_name` and `step_seconds`; none of the rows in
  the repository has them yet, so this part is empty until a GPU run adds some.

What a comparison with published hours can show: that the time model is in the right range for a
real recipe end to end (data loading, logging and checkpoint saving included in the published hours,
not in the estimate). It cannot separate the time model's error from the error of the assumed tokens
per sample: the finetuning hours scale almost linearly with that assumption.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.compute.flops import step_flops  # noqa: E402
from freezelab.compute.timing import Efficiency, step_time, training_time  # noqa: E402
from freezelab.memory.gpus import GPUS, find_gpu  # noqa: E402
from freezelab.memory.measured import case_of  # noqa: E402
from freezelab.models import index_of  # noqa: E402
from freezelab.plans import preset, resolve  # noqa: E402
from freezelab.sources import resolve as resolve_source  # noqa: E402
from freezelab.workload import Workload  # noqa: E402

TARGET = 0.25   # the target: within 25% median

# -- assumptions, each with its source -----------------------------------------------------------------
README = "github.com/haotian-liu/LLaVA README.md"
# Pretraining data: "our 558K subset of the LAION-CC-SBU dataset with BLIP captions" (README). The
# "plain" template keeps only the image and the caption. docs/Data.md lists blip_laion_cc_sbu_558k.json
# at 181 MB: 324 bytes of JSON per sample, of which the short BLIP caption is the smaller part (the id,
# image path, keys and an instruction the plain template drops take the rest). Assumed: 32 text tokens
# per sample, the caption padded to the longest in its batch of 32 (pretrain.sh does no length grouping).
PRETRAIN_SAMPLES, PRETRAIN_TEXT = 558_000, 32
# Finetuning data: llava_v1_5_mix665k.json, "665K" (README; 665,298 records counted in LLaVA issue
# #657, of which 40,688 have no image). docs/Data.md lists llava_instruct_150k.json, the 158K
# conversations of the mix, at 229 MB: about 1,450 bytes of JSON, 1,300 characters of text, per
# sample: about 330 tokens at 4 characters per token, plus the vicuna_v1 system prompt and role tags.
# Assumed: 360 text tokens per sample for the whole mix (its academic VQA samples are shorter, its
# 40K ShareGPT samples longer; group_by_modality_length sorts each 128-sample megabatch by length,
# so padding is small) and one image per sample.
FINETUNE_SAMPLES, FINETUNE_TEXT = 665_000, 360
# Both scripts: bf16, gradient checkpointing, FlashAttention-2 (train_mem.py), AdamW (adamw_torch),
# model_max_length 2048, 8 GPUs (README: "LLaVA is trained on 8 A100 GPUs"), one epoch, no gradient
# accumulation. LLaVA's CLIPVisionTower.forward runs under torch.no_grad(), so the vision tower never
# builds a graph: modelled with the input-embedding hook off (the projector's output still makes the
# LLM's input require grad).


@dataclass(frozen=True)
class Published:
    name: str
    model: str
    plan: str
    batch: int            # per GPU (per_device_train_batch_size)
    text_tokens: int
    sharding: str
    gpu: str
    samples: int
    hours: float
    quote: str


PUBLISHED = (
    Published("pretrain 7B", "llava-1.5-7b", "stage1", 32, PRETRAIN_TEXT, "zero2", "A100 80 GB", PRETRAIN_SAMPLES,
              3.5, "Pretrain takes around 5.5 hours for LLaVA-v1.5-13B on 8x A100 (80G) ... It takes around "
              "3.5 hours for LLaVA-v1.5-7B."),
    Published("pretrain 13B", "llava-1.5-13b", "stage1", 32, PRETRAIN_TEXT, "zero2", "A100 80 GB", PRETRAIN_SAMPLES,
              5.5, "Pretrain takes around 5.5 hours for LLaVA-v1.5-13B on 8x A100 (80G)"),
    Published("finetune 7B", "llava-1.5-7b", "stage2", 16, FINETUNE_TEXT, "zero3", "A100 40 GB", FINETUNE_SAMPLES,
              10.0, "It takes around 10 hours for LLaVA-v1.5-7B on 8x A100 (40G)."),
    Published("finetune 13B", "llava-1.5-13b", "stage2", 16, FINETUNE_TEXT, "zero3", "A100 80 GB", FINETUNE_SAMPLES,
              20.0, "Visual instruction tuning takes around 20 hours for LLaVA-v1.5-13B on 8x A100 (80G)"),
)


def _gpu(name: str):
    return next(g for g in GPUS if g.name == name)


def published_rows(eff: Efficiency) -> list[tuple[str, str, str, float, float]]:
    out = []
    for r in PUBLISHED:
        index = index_of(resolve_source(r.model))
        mask = resolve(preset(r.plan), index).mask
        w = Workload(batch=r.batch, text_tokens=r.text_tokens, grad_ckpt=True, gpus=8, sharding=r.sharding)
        flops = step_flops(index, mask, w, input_require_grads=False)
        step = step_time(flops, _gpu(r.gpu), w, eff)
        hours = training_time(step, w, r.samples).seconds / 3600
        shape = f"{r.plan}, {r.batch} x (576 image + {r.text_tokens} text) per GPU, {r.sharding}, 8x {r.gpu}"
        out.append((r.name, shape, f"{step.seconds:.2f} s/step", r.hours, hours))
    return out


def measured_rows(paths: list[Path], eff: Efficiency) -> list[tuple[str, str, str, float, float]]:
    """Rows with `device_name` and `step_seconds`: estimated against measured seconds per step."""
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            gpu = find_gpu(row.get("device_name", ""))
            if not row.get("ok", True) or "step_seconds" not in row or gpu is None:
                continue
            case = case_of(row)
            index = case.index_for(index_of(resolve_source(case.model)))
            flops = step_flops(index, resolve(case.plan, index).mask, case.workload,
                               input_require_grads=case.input_require_grads)
            est = step_time(flops, gpu, case.workload, eff).seconds
            out.append((case.label, gpu.name, "s/step", row["step_seconds"], est))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mfu", type=float, default=Efficiency().mfu)
    p.add_argument("--bandwidth-efficiency", type=float, default=Efficiency().bandwidth)
    p.add_argument("--network-efficiency", type=float, default=Efficiency().network)
    p.add_argument("--rows", type=Path, nargs="*", default=sorted((ROOT / "benchmarks" / "data").glob("*.jsonl")),
                   help="JSON-lines files of GPU measurements (default: benchmarks/data/*.jsonl)")
    args = p.parse_args(argv)
    eff = Efficiency(args.mfu, args.bandwidth_efficiency, args.network_efficiency)
    print(f"time model: matmuls at {eff.mfu:.0%} of dense peak, bandwidth-bound ops at {eff.bandwidth:.0%} of memory "
          f"bandwidth, collectives at {eff.network:.0%} of the link\n")
    errors = []
    for title, rows, unit in (("published training times (" + README + ")", published_rows(eff), "h"),
                              ("measured step times (" + ", ".join(str(x) for x in args.rows) + ")",
                               measured_rows(args.rows, eff), "s")):
        print(title)
        if not rows:
            print("  none at hand: no row has device_name and step_seconds\n")
            continue
        for name, shape, detail, truth, est in rows:
            err = (est - truth) / truth
            errors.append(abs(err))
            print(f"  {name:<14} {shape:<70} {detail:>13}  published/measured {truth:6.2f} {unit}  "
                  f"estimated {est:6.2f} {unit}  {err:+6.1%}")
        print()
    median = statistics.median(errors)
    print(f"median |error| over {len(errors)} rows: {median:.1%} (target: within {TARGET:.0%}); "
          f"max {max(errors):.1%}")
    return 0 if median <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
