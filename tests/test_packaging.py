"""The package as a user gets it: ``import unstuck`` stays light while the README's framework
one-liners work after it, and the wheel holds what an installed unstuck needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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
