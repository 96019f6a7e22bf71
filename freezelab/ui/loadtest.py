"""The load test: a class of students on one server, loopback only. benchmarks/load_test.py prints its
figures, benchmarks/attack_load_test.py runs it beside attackers (freezelab.ui.attacks), and
tests/test_load.py runs a short version.

`run` starts `python app.py` on a free 127.0.0.1 port (freezelab.ui.launch), then runs each wave
as N students, each its own browser session over raw HTTP (freezelab.ui.http_client: what the page
sends, without a heavy client eating the cores the server needs). A student loads the model
(architecture only), then works open-loop, as a class does: events arrive at random, on average
one every EVENT_GAP_S seconds (exponential gaps: a Poisson process per student) whether or not the
server kept up. An event that comes due while the student still waits for the previous one is
sent as soon as that one is answered, and its latency counts from when it came due, so a slow
server cannot hide its queue by slowing the class down. The events mix presets, tree checkboxes
(the tree's own `module_toggle` event, ticking what is not fully trainable and unticking what is)
and workload edits (one control changed, all sent, as the page does).

After every event the student compares the trainable count its page shows with its own
independent count: the plan's parameters by name prefix in the model's named_parameters() on the
meta device, built here with transformers alone. A difference is a cross-session mismatch.

Measured: latency per event (from when it came due to its answer: queueing included), the server's
CPU time per event (all of the server process while the students work: HTTP, queue, handlers,
heartbeats, divided by their events), its CPU time per page load (each student's first load of the
model, before the clock starts), the load test's own CPU per event, errors (an HTTP error, a failed event, or a warning where none was due),
mismatches, and the server's RSS after start, after a warm-up session, at the end of each wave and
after its sessions have closed (heartbeat gone, unload handlers run).
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from freezelab.sources import KNOWN_DIR
from freezelab.ui.http_client import AppConfig, HttpSession
from freezelab.ui.launch import launch, stop
from freezelab.ui.memory_view import FIELDS, control_id

EVENT_GAP_S = 2.0          # mean seconds between one student's events (exponential: a Poisson process)
GRADIO_HEARTBEAT_S = 15    # how often Gradio writes to an open page by default: a closed one is noticed then
CLEANUP_S = 5.0            # after that write: unload handlers run, the session is dropped
MIX = (("preset", 0.35), ("toggle", 0.45), ("workload", 0.20))  # what a student does, how often
PRESETS = ("stage1", "stage2", "full", "llm", "vision-projector", "last-n", "lm-head", "frozen")
PROJECTOR = "model.multi_modal_projector."
VISION = "model.vision_tower."
LLM = ("model.language_model.", "lm_head.")
# Workload controls a student edits, with the values tried (all valid: a refusal would be an error).
EDITS: dict[str, tuple[Any, ...]] = {"batch": (1, 2, 4, 8, 16), "text_tokens": (256, 512, 1024, 2048),
                                     "images": (0, 1, 2), "dtype": ("bf16", "fp32"),
                                     "optimizer": ("adamw", "sgd", "adamw-8bit"), "grad_ckpt": (False, True),
                                     "attn": ("sdpa", "eager")}
WORKLOAD_START = {"batch": 1, "text_tokens": 1024, "images": 1, "dtype": "bf16", "autocast": "none",
                  "optimizer": "adamw", "grad_ckpt": False, "attn": "sdpa", "gpus": 1, "sharding": "ddp",
                  "offload_optimizer": False, "image_sizes": "", "frames": 0}


# -- the app ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process's CPU time so far (the load test's clients)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# -- the independent count ---------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """The model's parameters as transformers names them (meta device), for counting plans by prefix."""

    names: tuple[str, ...]
    numels: tuple[int, ...]
    llm_layers: int
    vision_layers: int

    @classmethod
    def build(cls, model: str) -> Reference:
        import torch
        from transformers import CONFIG_MAPPING, LlavaForConditionalGeneration

        data = json.loads((KNOWN_DIR / f"{model}.json").read_text())
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        if data["model_type"] != "llava":
            raise SystemExit("the load test drives LLaVA-1.5-style models (model_type llava)")
        with torch.device("meta"):
            net = LlavaForConditionalGeneration(CONFIG_MAPPING["llava"].from_dict(data))
        params = list(net.named_parameters())
        return cls(tuple(n for n, _ in params), tuple(p.numel() for _, p in params),
                   len(net.model.language_model.layers), len(net.model.vision_tower.encoder.layers))

    def count(self, on: list[bool]) -> int:
        return sum(n for n, flag in zip(self.numels, on, strict=True) if flag)

    def under(self, prefixes: tuple[str, ...]) -> list[bool]:
        return [name.startswith(prefixes) for name in self.names]

    def preset(self, name: str, n: int) -> list[bool]:
        layers = tuple(f"model.language_model.layers.{i}." for i in range(self.llm_layers - n, self.llm_layers))
        prefixes = {"stage1": (PROJECTOR,), "stage2": (PROJECTOR, *LLM), "full": ("",), "llm": LLM,
                    "vision-projector": (VISION, PROJECTOR), "last-n": layers, "lm-head": ("lm_head.",),
                    "frozen": ()}[name]
        return self.under(prefixes)

    def modules(self) -> list[str]:
        """Module paths a user ticks in the tree: towers, layers, their attention and MLP blocks."""
        paths = ["model.vision_tower", "model.multi_modal_projector", "model.language_model", "lm_head",
                 "model.language_model.embed_tokens"]
        paths += [f"model.vision_tower.encoder.layers.{i}" for i in range(self.vision_layers)]
        for i in range(self.llm_layers):
            base = f"model.language_model.layers.{i}"
            paths += [base, f"{base}.mlp", f"{base}.self_attn"]
        return paths


# -- one student -------------------------------------------------------------------------

@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)          # the kind of each event, beside its latency
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def shown_trainable(summary_html: str) -> int:
    start = summary_html.index('id="fl-trainable">') + len('id="fl-trainable">')
    return int(summary_html[start:summary_html.index("<", start)].replace(",", ""))


def is_warning(status: Any) -> bool:
    """The page's status line says something went wrong (error_text, or a refused workload value)."""
    return str(status or "").startswith("⚠")


class Student:
    """One browser session and the plan it expects the page to show."""

    def __init__(self, config: AppConfig, model: str, ref: Reference, seed: int) -> None:
        self.config, self.model, self.ref = config, model, ref
        self.rng = random.Random(seed)
        self.http: HttpSession | None = None
        self.mask = [False] * len(ref.names)
        self.paths = ref.modules()
        self.workload = dict(WORKLOAD_START)
        self.result = SessionResult()

    def open(self) -> None:
        self.http = HttpSession(self.config)

    def event(self, kind: str, what: str, name: str, data: list[Any], event_data: Any = None,
              due: float | None = None) -> None:
        assert self.http is not None
        reply = self.http.call(name, data, event_data)
        took = time.monotonic() - due if due is not None else reply.seconds
        if reply.error is not None:
            self.result.errors.append(f"{what}: {reply.error}")
            return
        self.result.latencies.append(took)
        self.result.kinds.append(kind)
        status = self.http.value("fl-status")
        if is_warning(status):
            self.result.errors.append(f"{what}: {status}")
            return
        got, want = shown_trainable(self.http.value("fl-summary")), self.ref.count(self.mask)
        if got != want:
            self.result.mismatches.append(f"{what}: page shows {got:,}, the plan trains {want:,}")

    def load(self) -> None:
        self.mask = self.ref.preset("stage1", 4)  # a fresh page opens on LLaVA stage 1, kept across the load
        self.event("load", f"load {self.model}", "load_model", [None, "tiny", self.model, "architecture only"])

    def step(self, due: float) -> None:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        {"preset": self._preset, "toggle": self._toggle, "workload": self._workload}[kind](due)

    def _preset(self, due: float) -> None:
        name, n = self.rng.choice(PRESETS), self.rng.randint(1, 8)
        self.mask = self.ref.preset(name, n)
        self.event("preset", f"preset {name} (n={n})", f"preset_{name.replace('-', '_')}", [None, n], due=due)

    def _toggle(self, due: float) -> None:
        path = self.rng.choice(self.paths)
        prefix = path + "."
        inside = [i for i, name in enumerate(self.ref.names) if name.startswith(prefix)]
        on = not all(self.mask[i] for i in inside)  # the checkbox: ticks a partly or wholly frozen module
        for i in inside:
            self.mask[i] = on
        self.event("toggle", f"{'train' if on else 'freeze'} {path}", "fl-tree-box.module_toggle", [None],
                   {"module": path, "on": on}, due=due)

    def _workload(self, due: float) -> None:
        name = self.rng.choice(list(EDITS))
        self.workload[name] = self.rng.choice([v for v in EDITS[name] if v != self.workload[name]])
        values = [self.workload[f] for f in FIELDS]
        self.event("workload", f"set {name} = {self.workload[name]}", f"{control_id(name)}.input", [None, *values],
                   due=due)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()


# -- waves and report ----------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def open_loop(student: Student, until: float, gap: float) -> None:
    """The student's events, due at exponential gaps of mean `gap` seconds, until `until`."""
    due = time.monotonic() + student.rng.expovariate(1 / gap)
    while due < until:
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        student.step(due)
        due += student.rng.expovariate(1 / gap)


def wave(config: AppConfig, model: str, ref: Reference, sessions: int, seconds: float, seed: int,
         gap: float = EVENT_GAP_S, started: Callable[[], None] | None = None) -> list[SessionResult]:
    """Run `sessions` students for `seconds`, counted from when all of them have loaded the model;
    `started` is called then."""
    results: list[SessionResult] = []
    ready = threading.Barrier(sessions + 1)
    clock: dict[str, float] = {}
    go = threading.Event()

    def worker(i: int) -> None:
        student = Student(config, model, ref, seed + i)
        try:
            student.open()
            student.load()
        except Exception as err:  # noqa: BLE001 - a student that cannot start is counted, not lost
            student.result.errors.append(f"connect: {type(err).__name__}: {err}")
        ready.wait()
        go.wait()
        try:
            if student.http is not None:
                open_loop(student, clock["until"], gap)
        except Exception as err:  # noqa: BLE001 - e.g. a page without the trainable count
            student.result.errors.append(f"session: {type(err).__name__}: {err}")
        finally:
            student.close()
            results.append(student.result)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    ready.wait()
    clock["until"] = time.monotonic() + seconds
    if started is not None:
        started()
    go.set()
    for t in threads:
        t.join(seconds + 180)
    return results


def summary(results: list[SessionResult]) -> dict[str, Any]:
    """Latency figures (ms) of the open-loop events (each student's first load, before the clock
    starts, is given apart), errors and mismatches of some students' results."""
    by_kind: dict[str, list[float]] = {}
    for r in results:
        for kind, x in zip(r.kinds, r.latencies, strict=True):
            by_kind.setdefault(kind, []).append(x)
    loads = by_kind.pop("load", [])
    latencies = [x for v in by_kind.values() for x in v]
    return {
        "events": len(latencies),
        "events_per_session_min": min((sum(k != "load" for k in r.kinds) for r in results), default=0),
        "load_p95_ms": 1000 * percentile(loads, 0.95) if loads else None,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
        "max_ms": 1000 * max(latencies) if latencies else None,
        "p95_ms_by_kind": {k: round(1000 * percentile(v, 0.95), 1) for k, v in sorted(by_kind.items())},
        "errors": sum(len(r.errors) for r in results),
        "mismatches": sum(len(r.mismatches) for r in results),
        "first_errors": [e for r in results for e in r.errors][:5],
        "first_mismatches": [m for r in results for m in r.mismatches][:5],
    }


def run(sessions: int = 30, seconds: float = 60.0, waves: int = 3, model: str = "llava-1.5-7b",
        seed: int = 0, max_sessions: int | None = None, gap: float = EVENT_GAP_S,
        public: bool = False, heartbeat_s: int | None = None) -> dict[str, Any]:
    """One server (public mode with `public`), a warm-up student, then `waves` waves; `max_sessions` sets
    FREEZELAB_MAX_SESSIONS (None: the app's default); `heartbeat_s` the server's heartbeat (None:
    Gradio's default, as deployed; a short one notices closed sessions sooner, for a short test)."""
    ref = Reference.build(model)
    proc, url = launch({} if max_sessions is None else {"FREEZELAB_MAX_SESSIONS": str(max_sessions)},
                       args=("--public",) if public else (), heartbeat_s=heartbeat_s)
    cleanup_wait = (heartbeat_s or GRADIO_HEARTBEAT_S) + CLEANUP_S
    try:
        config = AppConfig.read(url)
        rss = {"started": rss_bytes(proc.pid)}
        warm = wave(config, model, ref, 1, 3.0, seed=10_000, gap=0.5)  # the model into the cache, imports done
        time.sleep(cleanup_wait)
        rss["warm"] = rss_bytes(proc.pid)
        all_results: list[SessionResult] = []
        cpu = {"loads": 0.0, "events": 0.0, "own": 0.0}
        for w in range(waves):
            marks = {"before": cpu_seconds(proc.pid)}

            def started(marks: dict[str, float] = marks) -> None:  # every student has loaded the model
                marks["started"], marks["own"] = cpu_seconds(proc.pid), own_cpu_seconds()

            all_results += wave(config, model, ref, sessions, seconds, seed=seed + 1000 * w, gap=gap, started=started)
            cpu["events"] += cpu_seconds(proc.pid) - marks["started"]
            cpu["own"] += own_cpu_seconds() - marks["own"]
            cpu["loads"] += marks["started"] - marks["before"]
            rss[f"wave{w + 1}_end"] = rss_bytes(proc.pid)
            time.sleep(cleanup_wait)
            rss[f"wave{w + 1}_cleaned"] = rss_bytes(proc.pid)
        alive = proc.poll() is None
    finally:
        stop(proc)
    out = summary(all_results)
    events = out["events"] or 1
    growth = None
    if waves >= 2:
        growth = (rss[f"wave{waves}_cleaned"] - rss[f"wave{waves - 1}_cleaned"]) / sessions
    out["errors"] += sum(len(r.errors) for r in warm)
    return {
        "model": model, "sessions": sessions, "seconds": seconds, "waves": waves, "max_sessions": max_sessions,
        "gap_s": gap, "public": public, **out,
        "server_cpu_ms_per_event": 1000 * cpu["events"] / events,
        "server_cpu_ms_per_page_load": 1000 * cpu["loads"] / (sessions * waves),
        "client_cpu_ms_per_event": 1000 * cpu["own"] / events,
        "rss_mib": {k: round(v / 2**20, 1) for k, v in rss.items()},
        "rss_growth_per_session_kib": None if growth is None else round(growth / 1024, 1),
        "server_alive": alive,
    }
