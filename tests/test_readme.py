"""The README's embedding example runs as written and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_example_runs_verbatim(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has a python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:3] == ["ACTIVE", "VERIFY_RESIZE", "ACTIVE m1.medium"]
    history = lines[3:]
    assert any("timer" in line and "confirm_resize" in line for line in history)
    assert any("simulator.resize ok" in line for line in history)
