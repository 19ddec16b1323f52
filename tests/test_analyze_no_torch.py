"""``unstuck analyze`` and ``unstuck --help`` import no torch: reading a 2 kB CSV must not pay
torch's seconds and hundreds of MB. Each check runs in a fresh interpreter, where nothing else
has imported torch yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the CLI's main() in-process, then reports which heavy modules it left in sys.modules.
_PROBE = """
import json, sys
from unstuck.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps({"code": code, "torch": heavy[:5]}))
"""


def _run(*argv: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    rows = ["step,loss,val_loss,lr"]
    rows += [f"{s},{2.0 / (1 + s / 10):.4f},{2.1 / (1 + s / 12):.4f},0.001" for s in range(60)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_analyze_imports_no_torch(small_csv: Path) -> None:
    out = _run("analyze", str(small_csv), "--no-report")
    assert out["code"] == 0
    assert out["torch"] == []


def test_analyze_json_imports_no_torch(small_csv: Path) -> None:
    out = _run("analyze", str(small_csv), "--no-report", "--json")
    assert out["code"] == 0
    assert out["torch"] == []


def test_analyze_writing_its_report_imports_no_torch(small_csv: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "r.html"
    report.parent.mkdir()
    out = _run("analyze", str(small_csv), "-o", str(report))
    assert out["code"] == 0 and report.is_file()
    assert out["torch"] == []


def test_help_imports_no_torch() -> None:
    out = _run("--help")
    assert out["code"] == 0
    assert out["torch"] == []


def test_importtime_lists_no_torch(small_csv: Path) -> None:
    """The same through ``-X importtime``: no module named torch or torch.* is imported at all."""
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "unstuck.cli.main",
            "analyze",
            str(small_csv),
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "unstuck.analyze" in imported  # the probe does see the imports
    assert [m for m in imported if m == "torch" or m.startswith("torch.")] == []


def test_public_names_still_resolve() -> None:
    """``from unstuck import Guard`` and friends still work, lazily, and keep ``__all__``."""
    code = (
        "import sys, unstuck\n"
        "assert 'torch' not in sys.modules\n"
        "from unstuck import Guard, PlateauScheduler, explain, Finding, PlateauDetector\n"
        "assert unstuck.Guard is Guard and callable(explain)\n"
        "assert set(unstuck.__all__) <= set(dir(unstuck))\n"
        "for name in unstuck.__all__: getattr(unstuck, name)\n"
        "import unstuck.signals as s\n"
        "assert s.Frame is __import__('unstuck.signals.host', fromlist=['Frame']).Frame\n"
        "assert s.ActivationTap.__name__ == 'ActivationTap'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_rules_import_without_torch() -> None:
    """Every cause's module and the diagnose package import without torch."""
    code = (
        "import sys, pkgutil, importlib\n"
        "import unstuck.diagnose, unstuck.diagnose.causes as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module(c.__name__ + '.' + m.name)\n"
        "from unstuck.diagnose import all_rules\n"
        "assert all_rules()\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
