"""The core (`freezelab/` outside `freezelab/ui/`) never imports gradio: the CLI, the library and a
headless server use it without the UI stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, pkgutil, sys
import freezelab
names = [m.name for m in pkgutil.walk_packages(freezelab.__path__, "freezelab.")
         if not m.name.startswith("freezelab.ui") and m.name != "freezelab.__main__"]
for name in names:
    importlib.import_module(name)
print(len(names), "gradio" in sys.modules)
"""


def test_every_core_module_imports_without_gradio():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    count, gradio_loaded = out.stdout.split()
    assert int(count) >= 40  # every core module, not an empty walk
    assert gradio_loaded == "False"


def test_charts_and_the_tree_rows_need_no_model_loading():
    """The figures and the tree work on an index alone: importing them must not pull in the model
    builders, the MODEL resolver or the deployment policy (nor, through them, torch)."""
    probe = ("import sys, freezelab.charts, freezelab.ui.tree_view\n"
             "print(sorted(m for m in ('freezelab.models', 'freezelab.sources', 'freezelab.policy', "
             "'freezelab.model_cache', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_dashboard_events_registry_and_views_import_without_gradio():
    probe = ("import sys\n"
             "import freezelab.ui.handlers, freezelab.ui.registry, freezelab.ui.gpu_lines\n"
             "import freezelab.ui.tree_view, freezelab.ui.memory_view, freezelab.ui.verify_view\n"
             "import freezelab.ui.export_view, freezelab.ui.learn_view\n"
             "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
