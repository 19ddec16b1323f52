"""Front-ends reach the pipeline through public seams only.

``integrations/`` and ``cli/`` are shells over the Guard, the hub, the engine and the store: if a
shell reads or writes another module's ``_private`` names, a change inside that module breaks it
silently (Lightning's callback once swapped the hub's private tap lists). So an attribute with a
leading underscore is refused here unless it is the module's own: on ``self``, ``cls`` or
``super()``, or a name the same module defines (a ``def _x``, a ``self._x = ...``, a class
attribute ``_x``); a closure aliasing ``self`` as ``run`` still reads its own object.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_mlp
from unstuck.integrations.loop import Guard

F = torch.nn.functional

SRC = Path(__file__).resolve().parents[1] / "src" / "unstuck"
CHECKED = ("integrations", "cli")

# (file relative to src/unstuck, expression): why it cannot go through a public name.
ALLOWED = {
    # torch's multi-tensor kernels have no public spelling; torch.nn.utils calls them the same
    # way, and one fused call keeps these paths free of a Python loop over the parameters.
    ("integrations/_torch_controls.py", "torch._foreach_mul_"): "averaging accumulated gradients",
    ("integrations/scheduler.py", "torch._foreach_norm"): "the parameter distance's norm",
    ("integrations/scheduler.py", "torch._foreach_sub"): "the parameter distance's deltas",
}


def _own_private_names(tree: ast.AST) -> set[str]:
    """Underscore names the module defines itself: functions, methods, class attributes and
    attributes it assigns on ``self``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Name):
                        names.add(part.id)
                    elif (
                        isinstance(part, ast.Attribute)
                        and isinstance(part.value, ast.Name)
                        and part.value.id == "self"
                    ):
                        names.add(part.attr)
    return {n for n in names if n.startswith("_")}


def _is_own_base(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def private_reaches(source: str) -> list[tuple[int, str]]:
    """``(line, expression)`` of every access to another module's private name in ``source``."""
    tree = ast.parse(source)
    own = _own_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            if _is_own_base(node.value) or name in own:
                continue
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    return found


def _checked_files() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (SRC / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _checked_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_front_ends_use_public_seams_only(path):
    rel = path.relative_to(SRC).as_posix()
    reaches = [
        f"{rel}:{line}: {expr}"
        for line, expr in private_reaches(path.read_text())
        if (rel, expr) not in ALLOWED
    ]
    assert not reaches, "private names of other modules (add a public seam):\n" + "\n".join(reaches)


def test_the_allow_list_has_no_stale_entries():
    seen = {
        (p.relative_to(SRC).as_posix(), expr)
        for p in _checked_files()
        for _, expr in private_reaches(p.read_text())
    }
    assert set(ALLOWED) <= seen, f"no longer needed: {sorted(set(ALLOWED) - seen)}"


def test_the_check_catches_a_reach_into_another_object():
    source = (
        "class C:\n"
        "    def __init__(self, guard):\n"
        "        self._guard = guard\n"
        "        self._guard._closed\n"  # another object's private, behind our own attribute
        "        guard._hub._pre_taps = []\n"
        "        super()._why_not\n"
        "        self.__dict__\n"
        "from unstuck.x import _helper\n"
    )
    found = {expr for _, expr in private_reaches(source)}
    assert found == {
        "self._guard._closed",
        "guard._hub._pre_taps",
        "guard._hub",
        "from unstuck.x import _helper",
    }


def test_a_name_the_module_defines_is_its_own():
    source = (
        "class Run:\n"
        "    def _note(self): ...\n"
        "    def wrap(self):\n"
        "        run = self\n"
        "        return lambda: run._note()\n"
    )
    assert private_reaches(source) == []


def _batch(step: int):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, generator=g)
    return x, x @ torch.linspace(-1, 1, 12).reshape(4, 3)


def _guarded(**kw):
    torch.manual_seed(0)
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    kw = {"console": False, "flush_every": 10, "grad_norm_every": 1, **kw}
    return model, optimizer, Guard(model, optimizer, **kw)


def test_closed_and_evidence_are_read_only_views_of_the_run():
    model, optimizer, guard = _guarded()
    losses = []
    for step in range(20):
        x, y = _batch(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        guard.step(loss)
        losses.append(float(loss.detach()))
    assert not guard.closed
    steps, values = guard.evidence.series("loss")
    assert steps.tolist() == list(range(20)) and np.allclose(values, losses)
    assert np.allclose(guard.evidence.build(guard.steps).values_of("loss"), losses)
    assert not hasattr(guard.evidence, "add_series") and not hasattr(guard.evidence, "set")
    with pytest.raises(ValueError, match="read-only"):
        values[0] = 1.0  # the arrays themselves are read-only too
    guard.close()
    assert guard.closed


def _grad_norms(closure_style: bool) -> np.ndarray:
    """Gradient norms recorded by a plain loop, or by one whose backward runs inside
    ``optimizer.step(closure)`` (after the step pre-hooks) with gradients read manually."""
    model, optimizer, guard = _guarded()
    if closure_style:
        guard.read_gradients_manually()
    for step in range(20):
        x, y = _batch(step)
        if closure_style:

            def closure(x=x, y=y):
                optimizer.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                guard.read_gradients()  # where Lightning's on_before_optimizer_step runs
                return loss

            loss = optimizer.step(closure)
        else:
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
        guard.step(loss)
    assert guard.optimizer_steps == 20
    assert guard.evidence.series("lr/0")[1].tolist() == [0.05]  # still read in the hook
    guard.close()
    return guard.evidence.series("grad_norm")[1]


def test_manual_gradient_reads_see_the_gradients_of_a_closure_step():
    plain = _grad_norms(closure_style=False)
    assert plain.size == 20 and np.all(plain > 0)
    np.testing.assert_allclose(_grad_norms(closure_style=True), plain, rtol=1e-6)


def test_a_loop_that_clips_itself_records_through_the_seams():
    model, optimizer, guard = _guarded()
    assert guard.clip_threshold(2.0) == 2.0  # no clip_adjust yet: the factor is 1
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        guard.clip_threshold(0.0)
    for step in range(10):
        x, y = _batch(step)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in guard.parameters]
        total = torch.nn.utils.get_total_norm(grads)
        guard.record_clip(torch.tensor(3.0) if step % 2 else total * 0, 2.0)
        optimizer.step()
        guard.step(loss)
    assert len(guard.parameters) == len(list(model.parameters()))
    assert guard.evidence.series("clip_rate")[1].tolist() == [0.5]
    assert guard.evidence.series("clip_threshold")[1].tolist() == [2.0]
    guard.close()
