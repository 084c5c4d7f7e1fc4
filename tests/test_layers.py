"""The layers contract (pyproject's ``[tool.importlinter]``): kept by the code as it is,
and broken by an import that points the wrong way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], cwd=package_parent, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_code_keeps_its_layers() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "vmledger", tmp_path / "vmledger",
                    ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "vmledger" / "domain" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport vmledger.api.app  # wrong way\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    assert "vmledger.domain.errors -> vmledger.api.app" in done.stdout
