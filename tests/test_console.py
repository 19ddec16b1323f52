"""What a user reads: the change to make on a finding's line, the summary at close, and where
the lines go under an application's own ``logging`` setup."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from unstuck.record.console import (
    LOGGER_NAME,
    ensure_console_handler,
    finding_change,
    format_event_line,
    format_finding,
    format_summary,
)
from unstuck.types import ActionRecord, Finding, Plateau, Remedy

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"

# --------------------------------------------------------------------------- a new user's script

# What a new user writes: a plain loop, logging.basicConfig() (root at WARNING), the default
# policy, and Adam at 1e-5 where 1e-3 trains (the digits MLP of bench/scenarios, 8x8 images).
NEW_USER_SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import torch, unstuck
    from sklearn.datasets import load_digits

    logging.basicConfig()
    mode = sys.argv[1]
    if mode == "silenced":
        logging.getLogger("unstuck").setLevel(logging.WARNING)  # the app's explicit choice
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / (x.std(0) + 1e-8), dtype=torch.float32)
    y = torch.tensor(y)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)  # meant 1e-3
    guard = unstuck.Guard(model, optimizer, policy="rescue" if mode == "rescue" else "observe")
    g = torch.Generator().manual_seed(0)
    for step in range(600):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        guard.step(loss)
    guard.close()
    lr_scale = [
        r.params for f in guard.findings if f.cause == "lr_too_low"
        for r in f.remedies if r.action == "lr_scale"
    ]
    print(json.dumps({
        "lr_scale": lr_scale,
        "lr_multiplier": guard.lr_multiplier,
        "actions": [(a.name, a.outcome) for a in guard.actions],
    }))
    """
)


def _run_new_user(mode: str) -> tuple[list[str], dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in [str(SRC_DIR), os.environ.get("PYTHONPATH")] if p),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", NEW_USER_SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.splitlines(), json.loads(proc.stdout.splitlines()[-1])


LR_CHANGE = r"lr_too_low (\d\.\d\d) → try lr ≈ (\S+) \(×([\d.]+)\)"


def test_a_new_users_observe_run_prints_the_lr_to_try_and_a_summary() -> None:
    lines, result = _run_new_user("observe")
    assert result["lr_scale"], "the setup must produce lr_too_low (else this test says nothing)"
    estimate = result["lr_scale"][0]["estimate"]
    # basicConfig's handler and format: unstuck's INFO lines get through a root at WARNING.
    assert lines and all(ln.startswith("INFO:unstuck:") for ln in lines), lines
    body = [ln.removeprefix("INFO:unstuck:") for ln in lines]
    events = [ln for ln in body if ln.startswith("step ")]
    hit = next(re.search(LR_CHANGE, ln) for ln in events if "lr_too_low" in ln)
    assert hit is not None, events
    assert float(hit.group(2)) == pytest.approx(1e-5 * estimate, rel=0.05)  # 2 digits shown
    assert float(hit.group(3)) == pytest.approx(estimate, rel=0.005)  # 3 digits

    summary = body[body.index(next(ln for ln in body if ln.startswith("summary"))) :]
    assert summary[0].startswith("summary after 600 steps: 1 plateau")
    assert any(re.search(LR_CHANGE, ln) for ln in summary[1:]), summary
    assert "make the change above in your config" in summary[-1]
    assert len(summary) <= 6  # a few lines, not a report


def test_a_kept_lr_rescue_says_which_lr_to_put_in_the_config() -> None:
    lines, result = _run_new_user("rescue")
    assert ["lr_scale", "kept"] in result["actions"], result
    multiplier = result["lr_multiplier"]
    assert multiplier > 2
    last = lines[-1].removeprefix("INFO:unstuck:")
    hit = re.fullmatch(
        r"  put lr=(\S+) in your config \(unstuck ran at ×([\d.]+) of your schedule\)", last
    )
    assert hit is not None, lines
    assert float(hit.group(1)) == pytest.approx(1e-5 * multiplier, rel=0.05)
    assert float(hit.group(2)) == pytest.approx(multiplier, rel=1e-2)
    assert any(re.search(r"lr ×[\d.]+ at step \d+: kept$", ln) for ln in lines)
    assert not any("policy='observe'" in ln for ln in lines)  # it was changed, not suggested


def test_an_explicit_warning_level_on_the_unstuck_logger_still_silences_it() -> None:
    lines, result = _run_new_user("silenced")
    assert result["lr_scale"]  # unstuck found it, and the application chose not to hear it
    assert lines == []


# --------------------------------------------------------------------------- the handler


@pytest.fixture
def unstuck_logger():
    logger = logging.getLogger(LOGGER_NAME)
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_a_level_nobody_chose_becomes_info_and_a_chosen_one_stays(unstuck_logger) -> None:
    unstuck_logger.setLevel(logging.NOTSET)
    ensure_console_handler()
    assert unstuck_logger.level == logging.INFO
    unstuck_logger.setLevel(logging.ERROR)
    ensure_console_handler()
    assert unstuck_logger.level == logging.ERROR


def test_a_handler_is_added_only_when_the_application_has_none(
    unstuck_logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    unstuck_logger.handlers[:] = []
    ensure_console_handler()  # pytest's own handlers are on the root logger
    assert unstuck_logger.handlers == []
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    ensure_console_handler()
    ensure_console_handler()
    assert [h.get_name() for h in unstuck_logger.handlers] == ["unstuck-console"]


# --------------------------------------------------------------------------- pure formatting


def _finding(cause: str = "lr_too_low", confidence: float = 0.73, **kw) -> Finding:
    remedies = kw.pop("remedies", (Remedy("lr_scale", {"factor": 46.3}, automatic=True),))
    return Finding(
        cause=cause,
        confidence=confidence,
        evidence=kw.pop("evidence", {}),
        step=kw.pop("step", 99),
        summary=kw.pop("summary", "update/weight ratio 2.2e-05 is 0.7 decades below 1e-04"),
        remedies=remedies,
        **kw,
    )


def _action(outcome: str, factor: float = 46.3, step: int = 99) -> ActionRecord:
    return ActionRecord(
        name="lr_scale",
        step=step,
        reason="lr_too_low",
        outcome=outcome,
        params={"factor": factor, "label": f"lr ×{factor:.3g}"},
    )


def test_a_finding_line_carries_the_lr_to_try() -> None:
    line = format_event_line(
        99,
        state="plateau",
        plateau=Plateau("train", 0, kind="early"),
        findings=[_finding()],
        lrs=[1e-6],
    )
    assert line == "step 99 plateau (early, train) · lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)"


def test_the_lr_to_try_counts_the_multiplier_the_finding_was_made_at() -> None:
    found_at_x10 = _finding(evidence={"lr_multiplier": 10.0})
    assert finding_change(found_at_x10, [1e-6]) == "lr ≈ 4.6e-04 (×46.3)"
    assert finding_change(_finding(), [1e-6], lr_multiplier=10.0) == "lr ≈ 4.6e-04 (×46.3)"
    assert finding_change(_finding(), [1e-6]) == "lr ≈ 4.6e-05 (×46.3)"


def test_the_whole_estimate_wins_over_the_capped_factor_of_one_action() -> None:
    capped = _finding(
        remedies=(Remedy("lr_scale", {"factor": 100.0, "estimate": 850.0}, automatic=True),)
    )
    assert finding_change(capped, [1e-6]) == "lr ≈ 8.5e-04 (×850)"
    assert finding_change(capped) == "lr ×850"  # no LR known: the factor alone


def test_param_groups_with_different_lrs_get_one_lr_each() -> None:
    assert finding_change(_finding(), [1e-6, 1e-5]) == (
        "lr ≈ 4.6e-05, 4.6e-04 (by param group) (×46.3)"
    )
    assert finding_change(_finding(), [1e-6, 1e-5, 1e-4, 1e-3]) == "lr ×46.3"


def test_changes_other_than_the_lr_and_findings_without_a_number() -> None:
    sgd = _finding(
        remedies=(
            Remedy("add_momentum", {"momentum": 0.9}, automatic=True),
            Remedy("lr_scale", {"factor": 12.0}, automatic=True),
        )
    )
    assert finding_change(sgd, [0.01]) == "momentum=0.9 or lr ≈ 0.12 (×12)"
    clipping = _finding(
        "over_clipping",
        remedies=(
            Remedy("clip_adjust", {"factor": 10.0}, automatic=True),
            Remedy("raise_clip_norm", {"max_norm": 2.5}),
        ),
    )
    assert finding_change(clipping) == "max_norm=2.5"  # the value beats the factor
    warmup = _finding("missing_warmup", remedies=(Remedy("warmup", {"length": 2000}, True),))
    assert format_finding(warmup) == "missing_warmup 0.73 → try a warm-up of 2000 steps"
    manual = _finding("label_noise", remedies=(Remedy("inspect_samples", {"ids": [1, 2]}),))
    assert finding_change(manual) is None
    assert format_finding(manual) == "label_noise 0.73"
    reset = _finding("stale_optimizer_state", remedies=(Remedy("reset_optimizer_state"),))
    assert finding_change(reset) is None


def test_a_kept_lr_rescue_ends_the_summary_with_the_lr_for_the_config() -> None:
    lines = format_summary(
        600,
        plateaus=[Plateau("train", 0, 199, kind="early")],
        findings=[_finding()],
        actions=[_action("kept")],
        lrs=[1e-6],
        lr_multiplier=46.3,
        policy="rescue",
    )
    assert lines == [
        "summary after 600 steps: 1 plateau: train steps 0–199 (early)",
        "  lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)",
        "  lr ×46.3 at step 99: kept",
        "  put lr=4.6e-05 in your config (unstuck ran at ×46.3 of your schedule)",
    ]


def test_a_healthy_run_is_one_line_with_nothing_to_change() -> None:
    assert format_summary(500, lrs=[1e-3], policy="observe") == [
        "summary after 500 steps: no plateau; nothing to change"
    ]


def test_a_rolled_back_action_is_said_to_be_undone_and_leaves_no_lr_to_change() -> None:
    lines = format_summary(
        800,
        plateaus=[Plateau("train", 100, None, kind="mid")],
        findings=[_finding()],
        actions=[_action("rolled_back")],
        lrs=[1e-6],
        lr_multiplier=1.0,  # the rollback put the multiplier back
        policy="rescue",
    )
    assert lines[0] == "summary after 800 steps: 1 plateau: train from step 100, still open (mid)"
    assert re.fullmatch(r"  lr ×46\.3 at step 99: rolled back \(undone\b.*\)", lines[2])
    assert not any("put lr=" in ln for ln in lines)


def test_a_multiplier_past_a_thousand_is_said_in_plain_digits() -> None:
    for lrs, expected in (
        ([1e-5], "  put lr=0.013 in your config (unstuck ran at ×1337 of your schedule)"),
        ([], "  multiply your LR by 1337 in your config (unstuck ran at ×1337 of your schedule)"),
    ):
        lines = format_summary(
            600, actions=[_action("kept")], lrs=lrs, lr_multiplier=1336.8, policy="rescue"
        )
        assert lines[-1] == expected


def test_under_observe_the_summary_says_the_change_is_the_users_to_make() -> None:
    lines = format_summary(600, findings=[_finding()], lrs=[1e-6], policy="observe")
    assert lines[0] == "summary after 600 steps: no plateau"
    assert lines[1] == "  lr_too_low 0.73 → try lr ≈ 4.6e-05 (×46.3)"
    assert "policy='rescue'" in lines[-1] and "your config" in lines[-1]
    no_number = _finding("capacity_limit", remedies=(Remedy("change_architecture"),))
    lines = format_summary(600, findings=[no_number], policy="observe")
    assert lines[1].startswith("  capacity_limit 0.73: update/weight")  # its own summary
    assert len(lines) == 2  # nothing to apply: no closing line


def test_the_summary_keeps_the_best_finding_of_each_cause_and_the_top_three() -> None:
    findings = [
        _finding("lr_too_low", 0.6, step=49),
        _finding("lr_too_low", 0.8, step=99, remedies=(Remedy("lr_scale", {"factor": 20.0}),)),
        _finding("capacity_limit", 0.4, remedies=()),
        _finding("dead_relu", 0.5, remedies=(), series="val", summary="x" * 200),
        _finding("label_noise", 0.3, remedies=()),
    ]
    lines = format_summary(1000, findings=findings, lrs=[1e-6])
    assert [ln.split()[0] for ln in lines[1:]] == ["lr_too_low", "dead_relu", "capacity_limit"]
    assert lines[1] == "  lr_too_low 0.80 → try lr ≈ 2.0e-05 (×20)"
    assert lines[2].startswith("  dead_relu (val) 0.50: xxx") and len(lines[2]) < 120
    assert all("\n" not in ln for ln in lines)


def test_many_actions_show_the_latest_and_count_the_rest() -> None:
    actions = [_action("kept", step=s) for s in range(0, 700, 100)]
    lines = format_summary(1000, actions=actions, lrs=[1e-3], lr_multiplier=2.0)
    assert "  (3 earlier actions not shown)" in lines
    assert [ln for ln in lines if " at step " in ln][-1] == "  lr ×46.3 at step 600: kept"
    assert lines[-1] == "  put lr=0.002 in your config (unstuck ran at ×2 of your schedule)"


def test_a_symptom_whose_root_is_named_stays_off_the_console() -> None:
    """'capacity_limit 0.17' right after a kept LR rescue is the first problem's echo."""
    from unstuck.record.console import format_event_line

    echo = Finding("capacity_limit", 0.17, {"explained_by": ["lr_too_low"]}, 399, "plateau")
    assert format_event_line(399, findings=[echo]) == ""
    real = Finding("lr_too_low", 0.7, {}, 399, "tiny updates")
    line = format_event_line(399, findings=[echo, real])
    assert "lr_too_low 0.70" in line and "capacity_limit" not in line


def test_the_summary_leaves_symptoms_to_the_record() -> None:
    from unstuck.record.console import format_summary

    echo = Finding("capacity_limit", 0.2, {"explained_by": ["lr_too_low"]}, 99, "plateau")
    root = Finding("lr_too_low", 0.61, {}, 49, "tiny updates")
    text = "\n".join(format_summary(steps=600, findings=[root, echo]))
    assert "lr_too_low 0.61" in text and "capacity_limit" not in text
