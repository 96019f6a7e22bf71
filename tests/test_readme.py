"""The README's commands are the ones CI runs, and its examples are true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_two_setup_commands_present():
    blocks = bash_blocks()
    assert any("pip install -r requirements.txt" in b and "python app.py" in b for b in blocks)
    assert any("python -m pytest" in b for b in blocks)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b.strip() for b in bash_blocks() if "python -m pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_readme_inspect_example_is_true():
    out = subprocess.run([sys.executable, "-m", "freezelab", "inspect", "llava-1.5-7b", "--train", "@projector",
                          "--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    shown = re.search(r"--json \| head -6\n(.*?)```", README, flags=re.S).group(1)
    for line in shown.strip().splitlines()[1:]:
        if "transformers_version" in line:
            continue  # the installed release may be a patch release ahead
        assert line.strip() in out, line
