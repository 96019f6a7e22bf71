"""freezelab: see, plan and verify which parameters of a LLaVA-family model train.

The core (everything here except `freezelab.ui`) never imports gradio, and
imports torch / transformers only when a model has to be built.
"""

__version__ = "0.1.0"
