"""`python app.py` in a subprocess on a free loopback port, as a user or a Space starts it: used by the
load test (freezelab.ui.loadtest), the start-up benchmark and the tests that drive the launched app.
Starting a subprocess imports nothing of gradio here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # where app.py is
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
           fresh_cache: bool = True, heartbeat_s: int | None = 1) -> tuple[subprocess.Popen, str]:
    """Start the app and return once its page answers: local mode unless ARGS or EXTRA_ENV say otherwise,
    offline, and (with `fresh_cache`) an empty index cache of its own. `heartbeat_s`: how often the
    server writes to each open page (a closed page is noticed at the next write); 1 s, so that tests see
    closed sessions at once, or None for Gradio's own default (15 s), as a deployment runs."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "FREEZELAB_PUBLIC": "0"}
    env.pop("GRADIO_HEARTBEAT_INTERVAL", None)
    if heartbeat_s is not None:
        env["GRADIO_HEARTBEAT_INTERVAL"] = str(heartbeat_s)
    if fresh_cache:
        env["FREEZELAB_CACHE"] = tempfile.mkdtemp(prefix="freezelab-app-cache-")
    env.update(extra_env or {})
    env.pop("SPACE_ID", None)
    # a file, not a pipe: nobody reads while the app runs, and a full pipe would block the server
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"app.py exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"app.py did not answer on {url} within {START_TIMEOUT_S} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
