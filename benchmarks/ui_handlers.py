"""Time the dashboard's event handlers as the server runs them, and the app's start-up.

    python benchmarks/ui_handlers.py              # handlers: median of --runs calls each
    python benchmarks/ui_handlers.py --startup    # `python app.py` until the page answers

A handler's time includes everything the server does for the event: resolving the
plan, the tree rows, the analytic estimate, the memory curve and how many GPUs, the FLOPs and
step times, and every Plotly figure serialised to JSON (what gr.Plot sends). Target (issue 5): one tree toggle on
llava-1.5-7b (architecture only) under 150 ms; start-up under 15 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freezelab.ui.launch import launch, stop  # noqa: E402
from freezelab.ui.registry import initial  # noqa: E402


def serialised(view) -> int:
    """Serialise what the page receives, as Gradio does; returns the bytes sent."""
    m = view.memory
    figures = (view.params_fig, view.map_fig, m.figure, m.curve, m.gpu_count, view.compute.figure)
    texts = (view.tree, view.summary, m.verdict, m.min_gpus, view.compute.time)
    # None: not sent (a workload edit leaves the plan's part to the page); CLEARED: an empty value (how many
    # GPUs while it is closed)
    return (sum(len(f.to_json()) for f in figures if initial(f) is not None)
            + sum(len(t) for t in texts if initial(t) is not None))


def median_ms(fn: Callable[[int], object], runs: int) -> tuple[float, float, float]:
    """(median, p90) wall-clock ms and the median CPU ms of this process (what other jobs on the cores
    inflate least)."""
    fn(0)  # warm: first call loads the model into the cache
    times, cpu = [], []
    for i in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    times.sort()
    return 1000 * statistics.median(times), 1000 * times[int(0.9 * (len(times) - 1))], 1000 * statistics.median(cpu)


def handlers_bench(runs: int) -> None:
    from freezelab.plans import preset
    from freezelab.model_cache import ModelCache
    from freezelab.ui import handlers

    app = handlers.App(cache=ModelCache())
    base = handlers.initial_view(app).session
    print(f"{'event':<58} {'median ms':>10} {'p90 ms':>8} {'CPU ms':>7} {'bytes sent':>11}")
    for model in ("tiny", "llava-1.5-7b", "llava-onevision-qwen2-72b"):
        session = handlers.load_model(app, base, model).session.with_plan(preset("stage1"))
        layers = app.cache.get(model).index.layers["llm"]
        sent = {}

        def toggle(i: int) -> None:
            view = handlers.toggle_module(app, session, layers[i % len(layers)], True)
            sent["toggle"] = serialised(view)

        def workload(i: int) -> None:
            view = handlers.set_workload(app, session, batch=1 + i % 8)
            sent["workload"] = serialised(view)

        def preset_(i: int) -> None:
            view = handlers.apply_preset(app, session, ("stage2", "last-n", "full")[i % 3])
            sent["preset"] = serialised(view)

        def preview(i: int) -> None:
            handlers.preview_selector(app, session, ("*q_proj*", "@llm.layers[-4:]", "re:mlp")[i % 3])

        for name, fn in (("toggle a decoder layer", toggle), ("change the batch size", workload),
                         ("apply a preset", preset_), ("selector preview (no charts)", preview)):
            med, p90, cpu = median_ms(fn, runs)
            key = {"toggle a decoder layer": "toggle", "change the batch size": "workload",
                   "apply a preset": "preset"}.get(name)
            print(f"{model + ': ' + name:<58} {med:>10.1f} {p90:>8.1f} {cpu:>7.1f} {sent.get(key, 0):>11,}")


def startup_once(cold_cache: bool) -> float:
    """Seconds from starting `python app.py` to its first answer (with or without an index cache)."""
    t = time.perf_counter()
    proc, _ = launch(fresh_cache=cold_cache)
    took = time.perf_counter() - t
    stop(proc)
    return took


def startup_bench(runs: int) -> None:
    for cold in (True, False):
        times = [startup_once(cold) for _ in range(runs)]
        label = "empty index cache" if cold else "warm index cache"
        print(f"python app.py -> page answers ({label}): median {statistics.median(times):.1f} s "
              f"over {runs} runs (min {min(times):.1f}, max {max(times):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="calls per handler (start-ups with --startup: 3)")
    parser.add_argument("--startup", action="store_true", help="time the app's start-up instead")
    args = parser.parse_args()
    if args.startup:
        startup_bench(args.runs if args.runs != 30 else 3)
    else:
        handlers_bench(args.runs)


if __name__ == "__main__":
    main()
