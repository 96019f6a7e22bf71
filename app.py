"""freezelab dashboard: `python app.py`, then open the printed URL.

Hugging Face Spaces runs this file too. Host and port follow Gradio's own
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT environment variables.
"""

import os

# No usage analytics calls: the app must start (and stay) quiet on machines without internet.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from freezelab.ui.blocks import create_app, launch_options  # noqa: E402

demo = create_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
