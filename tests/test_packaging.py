"""The package as a user gets it: ``import unstuck`` stays light while the README's framework
one-liners work after it, and the wheel holds what an installed unstuck needs."""

from __future__ import annotations

import email
import email.message
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Frameworks and extras that ``import unstuck`` must not pull in: each costs seconds to import,
# and a user of one framework need not have the others.
HEAVY = (
    "lightning",
    "pytorch_lightning",
    "transformers",
    "accelerate",
    "keras",
    "tensorflow",
    "tensorboard",
    "mlflow",
    "plotly",
    "sklearn",
)


def _readme_one_liners() -> list[str]:
    """The README's ``unstuck.integrations.<framework>.UnstuckCallback()`` expressions."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"unstuck\.integrations\.\w+\.UnstuckCallback\(\)", text)))


def test_import_is_light_and_the_readme_one_liners_work() -> None:
    """In a fresh interpreter (this one has imported the frameworks already): ``import unstuck``
    imports none of them, and each one-liner then resolves through the lazy attributes."""
    one_liners = _readme_one_liners()
    assert len(one_liners) == 3, one_liners  # lightning, hf, keras
    script = f"""
import json, sys
import unstuck
heavy = [m for m in {HEAVY!r} if m in sys.modules]
made = [type(eval(expr, {{"unstuck": unstuck}})).__module__ for expr in {one_liners!r}]
print(json.dumps({{"heavy": heavy, "made": made, "scheduler": unstuck.integrations.scheduler
    .__name__, "loop": unstuck.integrations.loop.__name__}}))
"""
    env = {**os.environ, "KERAS_BACKEND": "torch"}  # Keras 3 without TensorFlow, as documented
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert sorted(result["made"]) == sorted(
        expr.removesuffix(".UnstuckCallback()") for expr in one_liners
    )
    assert result["scheduler"] == "unstuck.integrations.scheduler"
    assert result["loop"] == "unstuck.integrations.loop"


def test_unknown_attributes_still_raise_attribute_error() -> None:
    """The lazy hooks answer only for real submodules: ``hasattr`` and typos behave as usual."""
    import unstuck
    import unstuck.integrations

    assert not hasattr(unstuck, "no_such_thing")
    assert not hasattr(unstuck.integrations, "no_such_framework")
    assert {"integrations", "record", "Guard"} <= set(dir(unstuck))
    assert {"lightning", "hf", "keras", "scheduler", "loop"} <= set(dir(unstuck.integrations))


# ----------------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the sources (so no build/ or egg-info lands in the
    checkout), with the installed setuptools: no index, no network."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("unstuck-*.whl")
    return built


def _pyproject_extras() -> set[str]:
    """The extras pyproject.toml declares (read by hand: tomllib is Python 3.11+, and 3.10 is
    supported)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*=", section, flags=re.MULTILINE))


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_holds_every_module_and_the_type_marker(wheel: Path) -> None:
    """Causes and actions are discovered from their folders at import time, so a module left
    out of the wheel would silently drop a cause; py.typed tells type checkers to read the
    annotations."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "unstuck/py.typed" in names
    assert "unstuck/record/report/page.html" in names  # the report's page shell
    sources = {
        path.relative_to(ROOT / "src").as_posix()
        for path in (ROOT / "src" / "unstuck").rglob("*.py")
    }
    assert sources - names == set()
    causes = {n for n in names if re.fullmatch(r"unstuck/diagnose/causes/[a-z]\w*\.py", n)}
    assert len(causes) >= 28  # one module per cause of the catalog
    assert {
        "unstuck/diagnose/causes/lr_too_low.py",
        "unstuck/diagnose/causes/nonfinite.py",
    } <= causes
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "unstuck = unstuck.cli.main:main" in archive.read(entry_points).decode()


def test_the_wheel_metadata_has_the_extras_and_the_classifiers(wheel: Path) -> None:
    """What an index shows and what pip resolves: every extra of pyproject.toml, the Python
    versions, the license expression and the links."""
    metadata = _metadata(wheel)
    assert set(metadata.get_all("Provides-Extra") or []) == _pyproject_extras()
    assert {"lightning", "hf", "keras", "report", "dev"} <= set(metadata.get_all("Provides-Extra"))
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("torch>=") and "extra" not in r for r in requires)
    assert any(r.startswith("keras>=") and 'extra == "keras"' in r for r in requires)
    classifiers = set(metadata.get_all("Classifier") or [])
    for version in ("3.10", "3.11", "3.12"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert {"Operating System :: OS Independent", "Typing :: Typed"} <= classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Intended Audience ::") for c in classifiers)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Keywords"]
    assert metadata["Description-Content-Type"] == "text/markdown"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
