"""freezelab dashboard: `python app.py`, then open the printed URL.

Hugging Face Spaces runs this file too. Host and port follow Gradio's own
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT environment variables.

Public mode (paths only under the model roots, Hub ids config-only, weights,
steps and simulations limited) is on by itself on a Space (SPACE_ID) or with
FREEZELAB_PUBLIC=1; `--public` / `--local` and `--model-root DIR` say the same
on the command line.
"""

import argparse
import os
from pathlib import Path

# No usage analytics calls: the app must start (and stay) quiet on machines without internet.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event, for its
# monitoring page (11 ms of CPU per event with 100 events kept, 25 ms with 10,000): this app does not
# use that page, so the summary is rebuilt once per 1,000 events, over the last 1,000.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")

from freezelab.policy import from_options  # noqa: E402
from freezelab.ui.blocks import create_app, launch_options  # noqa: E402
from freezelab.ui.handlers import App  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The freezelab dashboard (host and port: GRADIO_SERVER_NAME / "
                                "GRADIO_SERVER_PORT).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--public", action="store_const", const=True, dest="public",
                      help="public mode: local paths only under --model-root, Hub ids config-only, weights, "
                      "sanity steps and simulations limited (default: on when SPACE_ID or FREEZELAB_PUBLIC=1 is set)")
    mode.add_argument("--local", action="store_const", const=False, dest="public",
                      help="local mode: everything open (your own machine)")
    p.add_argument("--model-root", action="append", type=Path, default=[], metavar="DIR",
                   help="in public mode, a directory whose checkpoints and configs may be loaded (repeatable; "
                   "added to FREEZELAB_MODEL_ROOTS)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    app = App.for_policy(from_options(args.public, args.model_root))
    demo = create_app(app)
    demo.launch(**launch_options(app))
else:  # imported (e.g. `gradio app.py` reload mode): the environment decides
    demo = create_app()
