"""The load test: many browser sessions at once against the launched app, loopback only. The
benchmark (benchmarks/load_test.py) prints its figures; tests/test_load.py runs a short version.

`run` starts `python app.py` on a free 127.0.0.1 port (freezelab.ui.launch), then runs each wave
as N gradio_client sessions in threads, every one its own browser session. A session loads the
model (architecture only), then until the time is up applies presets and trains or freezes
modules (what a tree checkbox does), with a short think time between events. After every event
it compares the trainable count the page shows with its own independent count: the plan's
parameters by name prefix in the model's named_parameters() on the meta device, built here with
transformers alone. A difference is a cross-session mismatch.

Measured: latency per event (client round trip, queueing included), the server's CPU time per
event, errors (an exception, or a warning where none was due), mismatches, and the server's RSS
after start, after a warm-up session, at the end of each wave and after its sessions have closed
(heartbeat gone, unload handlers run). Growth per session is the RSS difference between the last
two cleanups divided by the sessions of the last wave.

Needs gradio_client (requirements-dev.txt); it is imported when a session starts.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from freezelab.sources import KNOWN_DIR
from freezelab.ui.launch import launch, stop

THINK_S = (0.5, 2.0)       # seconds between one session's events (uniform): a user reading the page
CLEANUP_WAIT_S = 8.0       # after the clients close: heartbeats end (1 s interval here), unload runs
STATUS, HEADER, SUMMARY = 0, 1, 2   # view outputs as gradio_client returns them (the session state is dropped)
PRESETS = ("stage1", "stage2", "full", "llm", "vision-projector", "last-n", "lm-head", "frozen")
PROJECTOR = "model.multi_modal_projector."
VISION = "model.vision_tower."
LLM = ("model.language_model.", "lm_head.")


# -- the app ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        return sum(n for n, flag in zip(self.numels, on) if flag)

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


# -- one session -------------------------------------------------------------------------

@dataclass
class SessionResult:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)


def shown_trainable(summary_html: str) -> int:
    start = summary_html.index('id="fl-trainable">') + len('id="fl-trainable">')
    return int(summary_html[start:summary_html.index("<", start)].replace(",", ""))


class Session:
    """One browser session: its own gradio_client (its own session hash) and its own expected mask."""

    def __init__(self, url: str, model: str, ref: Reference, seed: int) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.model, self.ref = model, ref
        self.rng = random.Random(seed)
        self.mask = [False] * len(ref.names)
        self.paths = ref.modules()
        self.result = SessionResult()

    def event(self, what: str, api: str, *args: Any) -> None:
        t = time.perf_counter()
        try:
            out = self.client.predict(*args, api_name=api)
        except Exception as err:  # noqa: BLE001 - any failure of the app counts as an error
            self.result.errors.append(f"{what}: {type(err).__name__}: {err}")
            return
        self.result.latencies.append(time.perf_counter() - t)
        if str(out[STATUS]).startswith("⚠️"):
            self.result.errors.append(f"{what}: {out[STATUS]}")
            return
        got, want = shown_trainable(out[SUMMARY]), self.ref.count(self.mask)
        if got != want:
            self.result.mismatches.append(f"{what}: page shows {got:,}, the plan trains {want:,}")

    def load(self) -> None:
        self.mask = self.ref.preset("stage1", 4)  # a fresh page opens on LLaVA stage 1, kept across the load
        self.event(f"load {self.model}", "/load_model", "tiny", self.model, "architecture only")

    def step(self) -> None:
        if self.rng.random() < 0.4:
            name = self.rng.choice(PRESETS)
            n = self.rng.randint(1, 8)
            self.mask = self.ref.preset(name, n)
            self.event(f"preset {name} (n={n})", f"/preset_{name.replace('-', '_')}", n)
        else:
            path, on = self.rng.choice(self.paths), self.rng.random() < 0.6
            prefix = path + "."
            self.mask = [flag if not name.startswith(prefix) else on for name, flag in zip(self.ref.names, self.mask)]
            self.event(f"{'train' if on else 'freeze'} {path}", "/train" if on else "/freeze", path)

    def close(self) -> None:
        self.client.close()


# -- waves and report ----------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wave(url: str, model: str, ref: Reference, sessions: int, seconds: float, seed: int,
         think: tuple[float, float] = THINK_S) -> list[SessionResult]:
    """Run `sessions` sessions for `seconds`, counted from when all of them are connected."""
    results: list[SessionResult] = []
    ready = threading.Barrier(sessions + 1)
    clock: dict[str, float] = {}
    go = threading.Event()

    def worker(i: int) -> None:
        result = SessionResult()
        try:
            session = Session(url, model, ref, seed + i)
        except Exception as err:  # noqa: BLE001
            result.errors.append(f"connect: {type(err).__name__}: {err}")
            ready.wait()
            results.append(result)
            return
        ready.wait()
        go.wait()
        try:
            session.load()
            while time.monotonic() < clock["until"]:
                session.step()
                time.sleep(session.rng.uniform(*think))  # a user reads the page between clicks
        except Exception as err:  # noqa: BLE001 - e.g. a page without the trainable count: counted, not lost
            session.result.errors.append(f"session: {type(err).__name__}: {err}")
        finally:
            session.close()
            results.append(session.result)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    ready.wait()
    clock["until"] = time.monotonic() + seconds
    go.set()
    for t in threads:
        t.join(seconds + 180)
    return results


def run(sessions: int = 20, seconds: float = 60.0, waves: int = 3, model: str = "llava-1.5-7b",
        seed: int = 0, max_sessions: int | None = None, think: tuple[float, float] = THINK_S,
        public: bool = False) -> dict[str, Any]:
    """One server (public mode with `public`), a warm-up session, then `waves` waves; `max_sessions` sets
    FREEZELAB_MAX_SESSIONS (None: the app's default)."""
    ref = Reference.build(model)
    proc, url = launch({} if max_sessions is None else {"FREEZELAB_MAX_SESSIONS": str(max_sessions)},
                       args=("--public",) if public else ())
    try:
        rss = {"started": rss_bytes(proc.pid)}
        warm = wave(url, model, ref, 1, 3.0, seed=10_000)  # the model into the cache, first imports done
        time.sleep(CLEANUP_WAIT_S)
        rss["warm"] = rss_bytes(proc.pid)
        all_results: list[SessionResult] = []
        cpu = cpu_seconds(proc.pid)
        for w in range(waves):
            results = wave(url, model, ref, sessions, seconds, seed=seed + 1000 * w, think=think)
            rss[f"wave{w + 1}_end"] = rss_bytes(proc.pid)
            time.sleep(CLEANUP_WAIT_S)
            rss[f"wave{w + 1}_cleaned"] = rss_bytes(proc.pid)
            all_results += results
        cpu = cpu_seconds(proc.pid) - cpu
        alive = proc.poll() is None
    finally:
        stop(proc)
    latencies = [x for r in all_results for x in r.latencies]
    growth = None
    if waves >= 2:
        growth = (rss[f"wave{waves}_cleaned"] - rss[f"wave{waves - 1}_cleaned"]) / sessions
    return {
        "model": model, "sessions": sessions, "seconds": seconds, "waves": waves, "max_sessions": max_sessions,
        "think_s": list(think), "public": public,
        "events": len(latencies),
        "events_per_session_min": min((len(r.latencies) for r in all_results), default=0),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "p95_ms": 1000 * percentile(latencies, 0.95) if latencies else None,
        "server_cpu_ms_per_event": 1000 * cpu / len(latencies) if latencies else None,
        "errors": sum(len(r.errors) for r in all_results) + sum(len(r.errors) for r in warm),
        "mismatches": sum(len(r.mismatches) for r in all_results),
        "first_errors": [e for r in all_results for e in r.errors][:5],
        "first_mismatches": [m for r in all_results for m in r.mismatches][:5],
        "rss_mib": {k: round(v / 2**20, 1) for k, v in rss.items()},
        "rss_growth_per_session_kib": None if growth is None else round(growth / 1024, 1),
        "server_alive": alive,
    }
