"""UnstuckCallback and PlateauScheduler under a real (tiny, CPU, offline) HF Trainer.

The model is a one-layer BERT built from a config (no download); the data are random tokens
whose label is the first token's parity, so the loss falls a little in a few dozen steps.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from conftest import require
from unstuck import Guard, PlateauScheduler

SRC_DIR = pathlib.Path(__file__).resolve().parents[1] / "src"
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    require("transformers", "hf")
    require("accelerate", "hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def tiny_model() -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def dataset(n: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, 8), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i, 0] % 2} for i in range(n)]


def trainer(tmp_path: pathlib.Path, callbacks: list[Any], **overrides: Any) -> Any:
    from transformers import Trainer, TrainingArguments

    options: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 40,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    model = overrides.pop("model") if "model" in overrides else tiny_model()
    extra = {k: overrides.pop(k) for k in ("optimizers", "compute_metrics") if k in overrides}
    options.update(overrides)
    return Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=dataset(),
        eval_dataset=dataset(32, seed=1),
        callbacks=callbacks,
        **extra,
    )


def unstuck_callback(**kw: Any) -> Any:
    from unstuck.integrations.hf import UnstuckCallback

    return UnstuckCallback(**{"console": False, "flush_every": 10, **kw})


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every loss handed to ``Guard.step``, read back as floats."""
    seen: list[float] = []
    original = Guard.step

    def spy(self: Guard, loss: Any, **kw: Any) -> None:
        seen.append(float(loss))
        original(self, loss, **kw)

    monkeypatch.setattr(Guard, "step", spy)
    return seen


# -- the module -----------------------------------------------------------------------------------
def test_import_unstuck_imports_no_framework() -> None:
    code = (
        "import sys, unstuck; "
        "assert not {'transformers', 'lightning', 'accelerate'} & set(sys.modules), "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'lightning'))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_rejects_bad_options() -> None:
    from unstuck.integrations.hf import UnstuckCallback

    with pytest.raises(ValueError, match="loss_source"):
        UnstuckCallback(loss_source="batch")
    with pytest.raises(TypeError, match="unknown option 'flush'"):
        UnstuckCallback(flush=5)
    with pytest.raises(TypeError, match="gradient_accumulation_steps"):
        UnstuckCallback(accumulation_steps=4)
    with pytest.raises(TypeError, match="optimizer"):
        UnstuckCallback(optimizer=None)
    with pytest.raises(ValueError, match="policy"):
        UnstuckCallback(policy="panic")
    with pytest.raises(KeyError):
        UnstuckCallback(policy=["no_such_action"])


# -- feeding the Guard ----------------------------------------------------------------------------
@pytest.mark.parametrize("accumulation", [1, 2])
def test_feeds_one_loss_per_optimizer_step_and_the_eval_loss(
    tmp_path: pathlib.Path, fed: list[float], accumulation: int
) -> None:
    callback = unstuck_callback()
    run = trainer(
        tmp_path,
        [callback],
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=8 // accumulation,
        eval_strategy="steps",
        eval_steps=20,
    )
    run.train()
    guard = callback.guard
    assert callback.loss_source_used == "forward"
    assert guard.steps == 40 and len(fed) == 40  # one point per optimizer step
    assert guard._val_points == 2  # eval_loss at steps 20 and 40
    # The Trainer's logged loss is the mean over each logging window of the same step losses.
    logged = [row["loss"] for row in run.state.log_history if "loss" in row]
    means = [sum(fed[i : i + 5]) / 5 for i in range(0, 40, 5)]
    assert means == pytest.approx(logged, rel=1e-4)
    assert callback._hook is None  # hooks released at on_train_end


def test_falls_back_to_the_logged_loss_when_the_forward_returns_none(
    tmp_path: pathlib.Path, fed: list[float]
) -> None:
    callback = unstuck_callback()
    # Label smoothing: the Trainer pops the labels and computes the loss outside the model.
    run = trainer(tmp_path, [callback], label_smoothing_factor=0.1)
    run.train()
    logged = [row["loss"] for row in run.state.log_history if "loss" in row]
    assert callback.loss_source_used == "log"
    assert fed == pytest.approx(logged) and len(fed) == 8
    assert callback.guard.flush_every == 10  # given explicitly; the default would be 50 / 5


def test_lr_multiplier_composes_with_the_trainers_lambda_lr(tmp_path: pathlib.Path) -> None:
    from transformers import TrainerCallback

    callback = unstuck_callback(loss_source="forward")  # the Guard exists from on_train_begin
    seen: list[tuple[float, float, float]] = []  # (effective lr, schedule's lr, multiplier)

    class Probe(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            optimizer = kw["optimizer"].optimizer  # registered after the Guard's hooks
            scheduler = kw["lr_scheduler"]
            guard = callback.guard

            def read(opt: Any, a: Any, k: Any) -> None:
                lr = opt.param_groups[0]["lr"]
                seen.append((lr, scheduler.get_last_lr()[0], guard.lr_multiplier))

            optimizer.register_step_pre_hook(read)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 10:
                callback.guard._lr.set(3.0)  # what an lr_scale action does

    run = trainer(tmp_path, [callback, Probe()], warmup_steps=5, logging_steps=1)
    run.train()
    assert type(run.lr_scheduler).__name__ == "LambdaLR"
    assert len(seen) == 40
    for effective, schedule, multiplier in seen:
        assert effective == pytest.approx(schedule * multiplier)
    assert [m for _, _, m in seen[9:11]] == [1.0, 3.0]
    # The schedule is untouched: warmup then linear decay, as the Trainer computes it,
    # and the Trainer logs the schedule's LR.
    schedules = [s for _, s, _ in seen]
    expected = [1e-3 * min(i / 5, (40 - i) / 35) for i in range(40)]
    assert schedules == pytest.approx(expected)
    logged = [row["learning_rate"] for row in run.state.log_history if "learning_rate" in row]
    assert logged == pytest.approx(expected)
    assert run.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0)  # λ(40) of a linear decay


# -- the rewind's skip ----------------------------------------------------------------------------
def _kept_state(model: torch.nn.Module, optimizer: Any) -> list[torch.Tensor]:
    """The weights and every tensor of the optimizer's per-parameter state, copied."""
    tensors = [p.detach().clone() for p in model.parameters()]
    for state in optimizer.state.values():
        tensors += [v.detach().clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize(
    ("options", "at", "k"),
    [
        ({}, 10, 3),
        ({"gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}, 10, 3),
        ({"bf16": True}, 10, 3),
        ({"grad_scaler": True}, 10, 3),
        # the logged mean: a skip is a logging window (5 steps), so 2 skip 10 steps
        ({"label_smoothing_factor": 0.1}, 10, 2),
    ],
    ids=["forward", "accumulation", "bf16", "fp16-scaler", "log"],
)
def test_skipped_steps_leave_weights_and_optimizer_state_untouched(
    tmp_path: pathlib.Path, fed: list[float], options: dict[str, Any], at: int, k: int
) -> None:
    """The Trainer cannot leave a batch out: the callback drops the step's gradients before
    optimizer.step(), so AdamW passes over every parameter (weights, moments and step counts
    bit-identical), the skipped losses are not fed and the steps are hidden from the signals;
    the next step trains again and the LR schedule advances through the skipped steps."""
    from transformers import TrainerCallback

    from unstuck.rescue.actions.rewind import Rewind

    callback = unstuck_callback(grad_norm_every=1)
    kept: dict[int, list[torch.Tensor]] = {}
    tokens: list[dict[str, Any]] = []

    class SkipAfter(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            kept[state.global_step] = _kept_state(kw["model"], kw["optimizer"].optimizer)
            if state.global_step == at:  # the rewind action, as the engine applies it
                token = Rewind().apply(callback.guard._engine.controls, {"skip": k})
                tokens.append(token)

    options = dict(options)
    scaled = options.pop("grad_scaler", False)
    run = trainer(tmp_path, [callback, SkipAfter()], **options)
    if scaled:
        # accelerate makes no GradScaler on CPU: give it one, which scales the loss in backward
        # and steps through the optimizer wrapper as under fp16 on a GPU. Nothing unscales it
        # before on_pre_optimizer_step here (clipping unscales only under fp16), the case where
        # scaler.step with every gradient dropped would find no inf check and refuse.
        run.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    run.train()
    if scaled:
        assert run.optimizer.scaler is run.accelerator.scaler
        assert run.accelerator.scaler.get_scale() == 2.0**12  # no inf, no skipped step
    log_mode = "label_smoothing_factor" in options
    assert callback.loss_source_used == ("log" if log_mode else "forward")
    skipped = k * (5 if log_mode else 1)  # optimizer steps
    for step in range(at + 1, at + skipped + 1):
        assert all(torch.equal(a, b) for a, b in zip(kept[step], kept[at])), step
    assert not all(torch.equal(a, b) for a, b in zip(kept[at + skipped + 1], kept[at + skipped]))
    assert run.state.global_step == 40  # the Trainer counts the skipped steps ...
    assert run.lr_scheduler.last_epoch == 40  # ... and so does its LR schedule
    guard = callback.guard
    assert guard.optimizer_steps == 40 - skipped  # the Guard's signals see none of them
    assert len(guard.evidence.series("grad_norm")[1]) == 40 - skipped
    # the rewind's record says the loop skips, and the skip was used up
    assert tokens == [{"skip_before": 0, "skip_batches": k, "skip_owned": True}]
    assert guard.state_dict()["controls"]["skip"] == {"remaining": 0, "owned": True}
    if log_mode:  # the logged means of the skipped windows are not fed
        logged = [row["loss"] for row in run.state.log_history if "loss" in row]
        assert fed == pytest.approx(logged[:2] + logged[2 + k :]) and len(fed) == 8 - k
    else:
        assert guard.steps == len(fed) == 40 - skipped


# -- resume ---------------------------------------------------------------------------------------
def resume_run(tmp_path: pathlib.Path, restore: bool) -> tuple[Any, Any, Any]:
    first = unstuck_callback(policy="rescue", flush_every=5)
    saving = {"save_strategy": "steps", "save_steps": 20, "max_steps": 40}
    trainer(tmp_path, [first], **saving).train()
    second = unstuck_callback(policy="rescue", flush_every=5)
    run = trainer(tmp_path, [second], restore_callback_states_from_checkpoint=restore, **saving)
    run.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-20"))
    return first, second, run


def test_resume_restores_the_guard(tmp_path: pathlib.Path) -> None:
    from unstuck.integrations.hf import GUARD_FILE, UnstuckCallback

    first, second, run = resume_run(tmp_path, restore=True)
    checkpoint = tmp_path / "out" / "checkpoint-20"
    exported = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = exported["stateful_callbacks"]["UnstuckCallback"]
    assert saved["args"]["policy"] == "rescue" and saved["args"]["flush_every"] == 5
    assert saved["attributes"]["guard_file"] == str(checkpoint / GUARD_FILE)
    assert saved["attributes"]["guard_step"] == 20
    assert (checkpoint / GUARD_FILE).is_file()

    live = UnstuckCallback.of(run)  # the Trainer rebuilt the callback from its saved args
    assert live is not second and live.guard_options["flush_every"] == 5
    assert live.guard.steps == 40  # continued from the checkpoint's 20
    # The same run uninterrupted ends with the same detectors (the Trainer replays the data).
    resumed, straight = live.guard.state_dict(), first.guard.state_dict()
    for series in ("train", "val"):
        a, b = resumed["detectors"][series], straight["detectors"][series]
        for key in ("state", "plateaus", "n_points", "first_step", "last_step", "boundary"):
            assert a[key] == b[key], (series, key)
        assert a["bins"]["closed"]["sum_y"] == pytest.approx(b["bins"]["closed"]["sum_y"], rel=1e-5)


def test_resume_without_restoring_starts_a_fresh_guard(tmp_path: pathlib.Path) -> None:
    from unstuck.integrations.hf import UnstuckCallback

    _, second, run = resume_run(tmp_path, restore=False)
    assert UnstuckCallback.of(run) is second
    assert second.guard.steps == 20  # only the steps after the checkpoint


def test_state_is_json_and_names_what_cannot_be(tmp_path: pathlib.Path) -> None:
    from unstuck.integrations.hf import UnstuckCallback

    callback = UnstuckCallback(policy="rescue", run_dir=tmp_path, probe_fn=len, console=False)
    state = callback.state()
    json.dumps(state)
    assert state["args"] == {
        "policy": "rescue",
        "run_dir": str(tmp_path),
        "loss_source": "auto",
        "console": False,
    }
    assert state["attributes"]["unsaved_options"] == ["probe_fn"]
    assert state["attributes"]["guard_file"] is None  # nothing to save before training
    rebuilt = UnstuckCallback(**state["args"])
    assert rebuilt.policy == "rescue"


DDP_SCRIPT = """
import json, os, pathlib, sys
import torch
sys.path.insert(0, {tests!r})
import test_hf
from unstuck.integrations.hf import UnstuckCallback

out = pathlib.Path({out!r})
callback = UnstuckCallback(policy="rescue", flush_every=5, console=False, run_dir=str(out / "run"))
run = test_hf.trainer(out, [callback], ddp_backend="gloo", save_strategy="steps", save_steps=20,
                      eval_strategy="steps", eval_steps=10)
run.train()
guard = callback.guard
print("RESULT " + json.dumps({{
    "rank": run.args.process_index, "world": run.args.world_size, "steps": guard.steps,
    "state": guard.state, "actions": [a.to_dict() for a in guard.actions],
    "plateaus": [p.to_dict() for p in guard.plateaus], "run_dir": str(guard.run_dir),
}}), flush=True)
# Exit without the interpreter's teardown: gloo's process group can abort there ("terminate
# called without an active exception"), with or without unstuck (seen in 4 of 12 plain HF runs).
torch.distributed.barrier()
os._exit(0)
"""


def test_ddp_ranks_decide_alike_and_save_their_own_state(tmp_path: pathlib.Path) -> None:
    """Two CPU processes (gloo) under torchrun: the Guard's collectives line up on every rank."""
    script = tmp_path / "ddp.py"
    script.write_text(
        DDP_SCRIPT.format(tests=str(pathlib.Path(__file__).parent), out=str(tmp_path))
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(script)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(
        (
            json.loads(line[len("RESULT ") :])
            for line in done.stdout.splitlines()
            if line.startswith("RESULT ")
        ),
        key=lambda r: r["rank"],
    )
    assert [r["rank"] for r in results] == [0, 1] and results[0]["world"] == 2
    zero, one = results
    for key in ("steps", "state", "actions", "plateaus"):
        assert zero[key] == one[key], key
    assert zero["steps"] == 40
    assert zero["run_dir"] == str(tmp_path / "run") and one["run_dir"] == "None"  # rank 0 writes
    checkpoint = tmp_path / "out" / "checkpoint-20"
    assert (checkpoint / "unstuck_guard.pt").is_file()
    assert (checkpoint / "unstuck_guard-rank1.pt").is_file()


# -- PlateauScheduler as the Trainer's scheduler --------------------------------------------------
def test_trainer_steps_a_plateau_scheduler_with_metric_for_best_model(
    tmp_path: pathlib.Path,
) -> None:
    from transformers import TrainerCallback

    # A scripted metric that falls for 10 evaluations, then is flat: compute_metrics returns it
    # and the Trainer passes metrics["eval_" + metric_for_best_model] to scheduler.step. The
    # weights barely move (a small SGD step), so the flat metric is no hidden progress.
    values = iter([math.exp(-i / 3) + 0.2 + 0.002 * (-1) ** i for i in range(1000)])
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scheduler = PlateauScheduler(
        optimizer, factor=0.5, patience=1, detector_options={"min_points": 4}
    )
    lrs_at_eval: list[float] = []

    class Watch(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            lrs_at_eval.append(optimizer.param_groups[0]["lr"])

    run = trainer(
        tmp_path,
        [Watch(), unstuck_callback()],
        model=model,
        optimizers=(optimizer, scheduler),
        compute_metrics=lambda prediction: {"synthetic": next(values)},
        eval_strategy="steps",
        eval_steps=2,
        max_steps=80,
        metric_for_best_model="synthetic",
    )
    run.train()
    assert run.lr_scheduler is scheduler
    assert scheduler.last_epoch == 40  # stepped once per evaluation, with the metric
    assert scheduler.detector.n_points == 40
    assert scheduler.cuts and scheduler.cuts[0]["step"] > 20  # cut on the flat part only
    assert scheduler.cuts[0]["lrs"] == [pytest.approx(5e-5)]
    # The Trainer reads a ReduceLROnPlateau's LR from the optimizer, so the logs see the cut.
    logged = [row["learning_rate"] for row in run.state.log_history if "learning_rate" in row]
    assert logged[0] == pytest.approx(1e-4) and logged[-1] < 1e-4
    # The Trainer steps the scheduler after on_evaluate: a cut at evaluation k is the LR the
    # optimizer trains with until evaluation k + 1.
    for cut in scheduler.cuts[:-1]:
        assert lrs_at_eval[cut["step"]] == pytest.approx(cut["lrs"][0])


# -- the documentation ----------------------------------------------------------------------------
def test_docs_example_runs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (DOCS / "hf.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    namespace: dict[str, Any] = {"__name__": "docs_hf"}
    exec(compile(example.group(1), "docs/hf.md", "exec"), namespace)
    assert namespace["guard"].steps == namespace["trainer"].state.global_step
