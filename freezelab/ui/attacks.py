"""The attack load test: attackers send the worst inputs known while a class works, loopback only.
benchmarks/attack_load_test.py prints its figures.

`run` starts `python app.py --public` with a model root holding one hostile config (a llava_next
config inside config_bounds whose 1,024 copies of an 8192 x 8192 grid pinpoint give 131,328 image
tokens), warms it with one student, then runs a wave of students (freezelab.ui.loadtest: open-loop,
on llava-1.5-7b) while ATTACKERS attackers, each its own browser session over raw HTTP, send the
attacks below one after another as fast as they are answered, each attacker starting at another
point of the list. Each attack first loads its model and sets its workload; while the server pauses
an attacker's session (freezelab.throttle: after repeated refusals) it sends those again until they
are taken (each of those refusals timed too), so the attack that follows is the one named. Every
attack is one request a visitor can send; the figures are the time until each is answered (refused,
or matched within its budget), the class's latency, and the server's
memory at its baseline (after a warm-up student and one pass of every attack: the first index of a
config file imports transformers and torch, once), when the attack ends and once its sessions have
closed.

The attacks (each was found to hurt a public server before it had its bound):
- previews of `re:a{4294967294}` (gigabytes to compile) and of the busy 25-character glob (seconds of
  backtracking on a 7B model);
- a plan file of 1,000 rules of that glob, uploaded and imported (about 1,000 s before);
- a sanity step on tiny in bf16 with 262,144 text tokens (hours), one of the hostile config with an
  image (still in step 1 after 20 minutes), and one on `cuda` on a CPU-only server (waited 280 s for
  the device slot);
- a simulation of tiny with batch 4096 x 1,048,576 tokens x 64 images (11 minutes of a core).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freezelab.sources import KNOWN_DIR
from freezelab.ui.http_client import AppConfig, HttpSession, Reply
from freezelab.ui.launch import launch, stop
from freezelab.ui.loadtest import CLEANUP_S, GRADIO_HEARTBEAT_S, Reference, percentile, rss_bytes, summary, wave
from freezelab.ui.memory_view import FIELDS

ATTACKERS = 4
REFUSAL_TARGET_S = 1.0
SLOW_GLOB = "*?" * 12 + "Z"          # matches nothing: a backtracking matcher tries every split
BUSY_GLOB = "*?" * 12 + "*"          # matches every name segment of 12 or more characters
BIG_REGEX = "re:a{4294967294}"
PLAN_RULES = 1000
LONG_STEP = {"text_tokens": 262_144, "dtype": "bf16"}
HUGE_SIMULATION = {"batch": 4096, "text_tokens": 1_048_576, "images": 64, "dtype": "bf16"}
IMAGE_STEP = {"images": 1, "dtype": "bf16"}
PAUSED = "it is paused for"         # the throttle's refusal (freezelab.throttle)
PAUSED_SETUP = "load or workload sent again while paused"
WARM_UP_S = 10.0                    # the warm-up pass's setups retry a paused session this long
DEFAULT_WORKLOAD = {"batch": 1, "text_tokens": 64, "images": 1, "dtype": "fp32", "autocast": "none",
                    "optimizer": "adamw", "grad_ckpt": False, "attn": "sdpa", "gpus": 1, "sharding": "ddp",
                    "offload_optimizer": False, "image_sizes": "", "frames": 0}


def pinpoint_config() -> dict[str, Any]:
    """tiny as llava_next with image_size 8192, patch 32 and 1,024 copies of an 8192 x 8192 grid pinpoint:
    every value within config_bounds, 131,328 image tokens per image."""
    config = deepcopy(json.loads((KNOWN_DIR.parent / "tiny" / "config.json").read_text()))
    config.pop("architectures", None)
    config["vision_config"].update(image_size=8192, patch_size=32)
    config.update(model_type="llava_next", image_grid_pinpoints=[[8192, 8192]] * 1024)
    return config


def plan_text() -> bytes:
    return "\n".join([f"train {BUSY_GLOB}"] * PLAN_RULES).encode()


@dataclass
class AttackResult:
    seconds: dict[str, list[float]] = field(default_factory=dict)   # attack -> time to each answer
    answers: dict[str, str] = field(default_factory=dict)           # attack -> the first answer's words
    failures: list[str] = field(default_factory=list)               # an answer that was not the one due


def _answer(reply: Reply, session: HttpSession, shown: str | None) -> str:
    if reply.error is not None:
        return reply.error
    return str(session.value(shown) or "") if shown else ""


class Attacker:
    """One hostile browser session going through the attacks in turn."""

    def __init__(self, config: AppConfig, pinpoint_path: str, result: AttackResult) -> None:
        self.config = config
        self.http = HttpSession(config)
        self.pinpoint = pinpoint_path
        self.result = result
        self.workload = dict(DEFAULT_WORKLOAD)
        self.until = time.monotonic() + WARM_UP_S   # setups stop retrying then (run() sets the attack's end)

    def _timed(self, name: str, call: Callable[[], Reply], shown: str | None, refused: Callable[[str], bool]) -> None:
        reply = call()
        text = _answer(reply, self.http, shown)
        self.result.seconds.setdefault(name, []).append(reply.seconds)
        self.result.answers.setdefault(name, " ".join(text.split())[:160])
        if not refused(text):
            self.result.failures.append(f"{name}: {text[:200]}")

    def _setup(self, what: str, name: str, data: list[Any]) -> None:
        """Load a model or set the workload an attack needs; while the server pauses this session
        (freezelab.throttle), send it again, as an attacker would, so that the attack is the one named."""
        while True:
            reply = self.http.call(name, data)
            paused = PAUSED in (reply.error or "")
            if paused:  # a refusal too: timed like the attacks
                self.result.seconds.setdefault(PAUSED_SETUP, []).append(reply.seconds)
                self.result.answers.setdefault(PAUSED_SETUP, " ".join(str(reply.error).split())[:160])
            elif reply.error is not None:
                self.result.failures.append(f"{what}: {reply.error[:200]}")
            if not paused or time.monotonic() > self.until:
                return

    def _load(self, spec: str) -> None:
        self._setup(f"load {spec}", "load_model", [None, "tiny", spec, "architecture only"])

    def _workload(self, **values: Any) -> None:
        self.workload = {**DEFAULT_WORKLOAD, **values}
        self._setup(f"workload {values}", "set_workload", [None, *(self.workload[f] for f in FIELDS)])

    def attacks(self) -> list[Callable[[], None]]:
        # a refusal names its limit; once a session has hit limits STRIKES times it is paused (freezelab.throttle)
        refused_run: Callable[[str], bool] = lambda t: "this server allows" in t or PAUSED in t  # noqa: E731
        return [
            lambda: (self._load("llava-1.5-7b"),
                     self._timed("preview re:a{4294967294}", lambda: self.http.call("preview", [None, BIG_REGEX]),
                                 "fl-preview", lambda t: "repetition" in t or PAUSED in t)),
            lambda: (self._load("llava-1.5-7b"),
                     self._timed("preview the 25-character glob", lambda: self.http.call("preview", [None, SLOW_GLOB]),
                                 "fl-preview", lambda t: bool(t))),
            lambda: (self._load("llava-1.5-7b"),
                     self._timed(f"import a plan of {PLAN_RULES:,} busy glob rules",
                                 lambda: self.http.call("import_plan", [None, self.http.upload("plan.txt", plan_text())]),
                                 "fl-status", lambda t: bool(t))),
            lambda: (self._load("tiny"), self._workload(**LONG_STEP),
                     self._timed("sanity step, tiny bf16 x 262,144 tokens",
                                 lambda: self.http.call("sanity_step", [None, "cpu", 2, 1e-4]), None, refused_run)),
            lambda: (self._load(self.pinpoint), self._workload(**IMAGE_STEP),
                     self._timed("sanity step, 131,328 image tokens",
                                 lambda: self.http.call("sanity_step", [None, "cpu", 2, 1e-4]), None, refused_run)),
            lambda: (self._load("tiny"), self._workload(),
                     self._timed("sanity step on cuda", lambda: self.http.call("sanity_step", [None, "cuda", 2, 1e-4]),
                                 None, lambda t: "cuda" in t or PAUSED in t)),
            lambda: (self._load("tiny"), self._workload(**HUGE_SIMULATION),
                     self._timed("simulation, 4096 x 1,048,576 tokens x 64 images",
                                 lambda: self.http.call("simulate", [None]), None, refused_run)),
        ]

    def run(self, until: float, start: int, fresh: bool = False) -> None:
        """The attacks in turn until `until`; with `fresh`, each from a new session that never opens a page
        (one the throttle never sees twice, so never paused)."""
        self.until = until
        attacks = self.attacks()
        i = start
        while time.monotonic() < until:
            if fresh and i > start:
                self.http.close()
                self.http = HttpSession(self.config, heartbeat=False)   # no page: requests only
            attacks[i % len(attacks)]()
            i += 1

    def close(self) -> None:
        self.http.close()


def warm_up(config: AppConfig, pinpoint_path: str) -> AttackResult:
    """Every attack once, before the baseline is taken: what the first of each imports (transformers and
    torch, to index the hostile config) stays in the server for good, whatever the attack."""
    result = AttackResult()
    a = Attacker(config, pinpoint_path, result)
    try:
        for one in a.attacks():
            one()
    finally:
        a.close()
    return result


def attack(config: AppConfig, pinpoint_path: str, until: float, attackers: int, fresh: bool = False) -> AttackResult:
    """Run `attackers` attackers until `until` (with `fresh`, each attack from a new session); they share one result."""
    result = AttackResult()

    def worker(i: int) -> None:
        a = Attacker(config, pinpoint_path, result)
        try:
            a.run(until, start=2 * i, fresh=fresh)
        except Exception as err:  # noqa: BLE001 - a crashed attacker is reported, not lost
            result.failures.append(f"attacker {i}: {type(err).__name__}: {err}")
        finally:
            a.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(attackers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(until - time.monotonic() + 120)
    return result


def run(sessions: int = 30, seconds: float = 60.0, attackers: int = ATTACKERS, model: str = "llava-1.5-7b",
        seed: int = 0, again_s: float = 0.0, fresh: bool = False) -> dict[str, Any]:
    """One public server, a warm-up student, then a class of `sessions` for `seconds` beside `attackers`;
    with `again_s`, once every session has closed, the attackers alone again for that long (whether
    what the first attack left grows with a second: rss_mib's `again_cleaned`). With `fresh`, every
    attack comes from a new session that never opens a page."""
    ref = Reference.build(model)
    root = Path(tempfile.mkdtemp(prefix="freezelab-attack-root-"))
    pinpoint = root / "next.json"
    pinpoint.write_text(json.dumps(pinpoint_config()))
    proc, url = launch({"FREEZELAB_MAX_SESSIONS": str(sessions + attackers + 5), "FREEZELAB_MODEL_ROOTS": str(root)},
                       args=("--public",), heartbeat_s=None)
    cleanup = GRADIO_HEARTBEAT_S + CLEANUP_S
    try:
        config = AppConfig.read(url)
        rss = {"started": rss_bytes(proc.pid)}
        warm = wave(config, model, ref, 1, 3.0, seed=10_000, gap=0.5)
        warm_attacks = warm_up(config, str(pinpoint))
        time.sleep(cleanup)
        rss["baseline"] = rss_bytes(proc.pid)
        holder: dict[str, AttackResult] = {}
        thread = threading.Thread(target=lambda: holder.update(
            result=attack(config, str(pinpoint), time.monotonic() + seconds + 10, attackers, fresh)))
        thread.start()
        class_results = wave(config, model, ref, sessions, seconds, seed=seed)
        thread.join()
        rss["attack_end"] = rss_bytes(proc.pid)
        time.sleep(cleanup)
        rss["cleaned"] = rss_bytes(proc.pid)
        if again_s > 0 and attackers > 0:
            again = attack(config, str(pinpoint), time.monotonic() + again_s, attackers, fresh)
            holder["result"].failures.extend(again.failures)
            time.sleep(cleanup)
            rss["again_cleaned"] = rss_bytes(proc.pid)
        alive = proc.poll() is None
    finally:
        stop(proc)
    return {"sessions": sessions, "seconds": seconds, "attackers": attackers, "model": model,
            "class": summary(class_results), "warm_errors": sum(len(r.errors) for r in warm),
            "warm_up_failures": warm_attacks.failures,
            **attack_summary(holder.get("result", AttackResult())),
            "rss_mib": {k: round(v / 2**20, 1) for k, v in rss.items()}, "server_alive": alive}


def attack_summary(result: AttackResult) -> dict[str, Any]:
    """Per attack: how many were sent, the median and slowest time to the answer, and its first words."""
    rows = {name: {"sent": len(times), "median_ms": round(1000 * statistics.median(times)),
                   "p95_ms": round(1000 * percentile(times, 0.95)), "max_ms": round(1000 * max(times)),
                   "answer": result.answers.get(name, "")}
            for name, times in sorted(result.seconds.items())}
    every = [t for times in result.seconds.values() for t in times]
    return {"attacks": rows, "attack_max_ms": round(1000 * max(every)) if every else None,
            "attack_failures": result.failures[:10], "attack_failure_count": len(result.failures)}
