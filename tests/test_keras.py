"""``unstuck.integrations.keras.UnstuckCallback`` under real ``model.fit``, Keras 3 on torch.

Skipped only when keras cannot be imported and ``CI`` is unset; in CI that is a failure.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ["KERAS_BACKEND"] = "torch"  # before keras is first imported: no TensorFlow here

try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise ImportError(f"CI must install keras (pip install 'unstuck[keras]'): {exc}") from exc
    pytest.skip(
        f"keras is not importable ({exc}): pip install 'unstuck[keras]'", allow_module_level=True
    )

from unstuck.integrations.keras import (
    UnstuckCallback,
    batch_loss_from_running_mean,
    keras_snapshot,
    restore_keras_snapshot,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "keras.md"
# Keras's own log conversion (python_utils.pythonify_logs) trips numpy 2's copy= deprecation on
# every batch, with or without this callback.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _data(n: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 4-class problem a small MLP learns well at a sensible LR."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype("float32")
    teacher = rng.normal(size=(16, 4)).astype("float32")
    y = np.argmax(x @ teacher, axis=1).astype("int64")
    return x, y


def _model(lr: Any = 1e-2, optimizer: str = "SGD", seed: int = 0) -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )
    model.compile(
        getattr(keras.optimizers, optimizer)(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _weights(model: Any) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _optimizer_values(model: Any) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.optimizer.variables]


def _assert_bitwise(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


# ----------------------------------------------------------------------------- the batch loss


def test_batch_loss_from_running_mean_inverts_a_weighted_mean() -> None:
    losses, sizes = [3.0, 1.0, 2.5, 7.0], [64, 64, 64, 40]
    total = seen = 0.0
    previous = (0.0, 0.0)
    for loss, size in zip(losses, sizes):
        total += loss * size
        seen += size
        mean = total / seen
        assert batch_loss_from_running_mean(mean, seen, *previous) == pytest.approx(loss)
        previous = (mean, seen)
    assert np.isnan(batch_loss_from_running_mean(float("nan"), 2, 1.0, 1))
    assert np.isnan(batch_loss_from_running_mean(1.0, 1, 1.0, 1))  # no new weight


def test_recovered_batch_losses_equal_the_real_ones() -> None:
    """The loss Keras computes for each batch (recorded in ``compute_loss``, independently of
    its running mean) against the callback's recovery, over 3 epochs with a short last batch."""
    recorded: list[float] = []
    in_step = [False]  # Keras also computes a loss on placeholder data when it builds the model

    class Recording(keras.Sequential):  # type: ignore[misc]
        def train_step(self, data: Any) -> Any:
            in_step[0] = True
            try:
                return super().train_step(data)
            finally:
                in_step[0] = False

        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().compute_loss(*args, **kwargs)
            if in_step[0]:
                recorded.append(float(loss.detach()))
            return loss

    keras.utils.set_random_seed(0)
    model = Recording(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)]
    )
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(True))
    x, y = _data(1000)  # 15 batches of 64 and one of 40 per epoch
    callback = UnstuckCallback("observe", console=False)
    model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[callback])
    steps, recovered = callback.batch_losses
    assert len(recorded) == 48 and steps.tolist() == list(range(48))
    np.testing.assert_allclose(recovered, recorded, rtol=2e-5, atol=1e-6)
    # Keras's own running mean is visibly not the batch loss (what the recovery undoes).
    assert not np.allclose(recovered, model.history.history["loss"][-1], rtol=1e-2)


# ----------------------------------------------------------------------------- rescue in fit


def test_plateau_is_detected_and_an_lr_action_verified_in_fit() -> None:
    """SGD at a far too small LR: detected, diagnosed (update/weight ratio), LR raised, kept."""
    model = _model(lr=1e-4)
    x, y = _data()
    callback = UnstuckCallback("rescue", console=False)
    history = model.fit(x, y, batch_size=32, epochs=14, verbose=0, callbacks=[callback])
    assert callback.batches == 14 * 32
    assert any(p.series == "train" for p in callback.plateaus)
    assert any(f.cause == "lr_too_low" for f in callback.findings)
    raised = [a for a in callback.actions if a.name == "lr_scale" and a.params["factor"] > 1]
    assert raised and raised[0].outcome == "kept"
    assert "verdict_change" in raised[0].evidence and raised[0].evidence["cause"] == "lr_too_low"
    assert callback.lr_multiplier > 1
    # The LR variable holds the user's value between batches: the multiplier rides on it.
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)
    plain = _model(lr=1e-4).fit(x, y, batch_size=32, epochs=14, verbose=0)
    assert history.history["loss"][-1] < 0.9 * plain.history["loss"][-1]


def test_observe_changes_nothing() -> None:
    x, y = _data()
    plain = _model(lr=1e-4)
    plain.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=True)
    watched = _model(lr=1e-4)
    callback = UnstuckCallback("observe", console=False)
    watched.fit(x, y, batch_size=32, epochs=8, verbose=0, shuffle=True, callbacks=[callback])
    _assert_bitwise(_weights(plain), _weights(watched))
    _assert_bitwise(_optimizer_values(plain), _optimizer_values(watched))
    assert callback.actions == [] and callback.lr_multiplier == 1.0
    assert callback.plateaus  # it did watch: the stall was seen and reported


def test_snapshot_restores_weights_and_optimizer_variables_exactly() -> None:
    model = _model(lr=1e-2, optimizer="Adam")
    x, y = _data(256)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # moments and iterations are non-zero
    weights, variables = _weights(model), _optimizer_values(model)
    iterations = int(model.optimizer.iterations.numpy())
    snap = keras_snapshot(model, step=7)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == iterations + 16
    assert _weights(model)[0].tobytes() != weights[0].tobytes()
    restore_keras_snapshot(model, snap)
    _assert_bitwise(_weights(model), weights)
    _assert_bitwise(_optimizer_values(model), variables)
    assert int(model.optimizer.iterations.numpy()) == iterations
    # Training on from the restored state is training on from the original one.
    again = _model(lr=1e-2, optimizer="Adam")
    again.fit(x, y, batch_size=32, epochs=1, verbose=0)
    keras.utils.set_random_seed(1)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    keras.utils.set_random_seed(1)
    again.fit(x, y, batch_size=32, epochs=1, verbose=0)
    _assert_bitwise(_weights(model), _weights(again))


def test_a_harmful_action_is_rolled_back() -> None:
    """An LR ×10⁴ on a slow descent blows the loss up: rolled back, multiplier 1 again."""
    model = _model(lr=3e-3)
    x, y = _data()
    callback = UnstuckCallback(
        [("lr_scale", {"factor": 1e4})],
        horizon=100,
        console=False,
        # call the slow descent a plateau, to act at once
        detector_options={"flat_margin": 1.0, "max_flat_drop": 1.0},
    )
    model.fit(x, y, batch_size=32, epochs=12, verbose=0, callbacks=[callback])
    raised = [a for a in callback.actions if a.name == "lr_scale"]
    assert raised and raised[0].outcome == "rolled_back"
    # judged the moment the loss went non-finite, or at the horizon if it only rose
    assert raised[0].evidence["rolled_back_because"] in ("a non-finite loss", "worse")
    assert callback.lr_multiplier == 1.0
    assert np.all(np.isfinite(np.concatenate([w.ravel() for w in model.get_weights()])))


def test_a_checkpoint_mid_action_resumes_and_still_verifies_it() -> None:
    """state_dict() with an action pending, through torch.save / torch.load(weights_only=True),
    into a new callback: the resumed run verifies that action from its saved snapshot."""
    model = _model(lr=1e-4)
    x, y = _data()
    callback = UnstuckCallback("rescue", console=False, horizon=300)
    saved: dict[str, Any] = {}

    class Checkpoint(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if callback.batches == 200:  # the callback before this one has run batch 200
                buffer = io.BytesIO()
                torch.save(callback.state_dict(), buffer)
                saved["state"], saved["model"] = buffer.getvalue(), keras_snapshot(model)
                saved["actions"] = [a.to_dict() for a in callback.actions]

    model.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[callback, Checkpoint()])
    assert saved["actions"][0]["outcome"] == "pending"
    restore_keras_snapshot(model, saved["model"])  # the weights the checkpoint holds
    state = torch.load(io.BytesIO(saved["state"]), weights_only=True)
    resumed = UnstuckCallback("rescue", console=False, horizon=300)
    resumed.load_state_dict(state)  # before fit: applied when training begins
    model.fit(x, y, batch_size=32, epochs=8, verbose=0, callbacks=[resumed])
    assert resumed.batches == 200 + 8 * 32
    first = resumed.actions[0]
    assert first.step == saved["actions"][0]["step"]
    assert first.outcome in ("kept", "rolled_back") and "verdict_change" in first.evidence
    assert resumed.detectors["train"].plateaus[0].start == callback.plateaus[0].start


def test_range_test_measures_restores_and_applies_its_suggestion() -> None:
    model = _model(lr=1e-4)
    x, y = _data()
    callback = UnstuckCallback(["lr_range_test"], probe_budget=1.0, console=False)
    model.fit(x, y, batch_size=32, epochs=12, verbose=0, callbacks=[callback])
    sweep = next(a for a in callback.actions if a.name == "lr_range_test")
    assert sweep.outcome == "restored"
    assert sweep.evidence["probe_steps"] > 10 and "method" in sweep.evidence
    follow = [a for a in callback.actions if a.name == "lr_scale"]
    if sweep.evidence["suggested_factor"] is not None:
        assert follow and follow[0].evidence["range_test_step"] == sweep.step
        assert follow[0].outcome in ("kept", "rolled_back")
    assert not callback.probing


# ----------------------------------------------------------------------------- misuse


def test_a_schedule_is_a_one_line_error_unless_observing() -> None:
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 100, 0.9)
    x, y = _data(256)
    model = _model(lr=schedule)
    with pytest.raises(TypeError, match="LearningRateSchedule") as info:
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[UnstuckCallback("rescue")])
    message = str(info.value)
    assert "\n" not in message and "policy='observe'" in message and "float" in message
    callback = UnstuckCallback("observe", console=False)
    _model(lr=schedule).fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    assert callback.batches == 8


@pytest.mark.parametrize(
    ("policy", "match"),
    [("branch", "policy must be"), (["reset_optimizer_state"], "LR actions only")],
)
def test_bad_policies_are_rejected(policy: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UnstuckCallback(policy)


def test_missing_keras_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.delitem(sys.modules, "unstuck.integrations.keras")
    with pytest.raises(ImportError, match=re.escape("pip install 'unstuck[keras]'")):
        importlib.import_module("unstuck.integrations.keras")


# ----------------------------------------------------------------------------- the docs


def test_docs_example_runs() -> None:
    """docs/keras.md's first code block, verbatim."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    namespace: dict[str, Any] = {"__name__": "docs_keras"}
    exec(compile(block.group(1), str(DOCS), "exec"), namespace)
    callback = namespace["callback"]
    assert callback.actions and callback.actions[0].outcome == "kept"


# ----------------------------------------------------------------------------- recording


def test_run_dir_records_the_fit_as_the_guard_does_and_writes_the_report(tmp_path: Path) -> None:
    """The store holds every recovered batch loss, each epoch's val_loss, the state changes,
    findings and actions the callback reported; ``load_run`` and the report read it back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from unstuck.record import read_events, read_metrics, read_runs
    from unstuck.record.rundata import load_run

    model = _model(lr=1e-4)
    x, y = _data()
    callback = UnstuckCallback(
        "rescue",
        console=False,
        run_dir=tmp_path / "run",
        tensorboard=tmp_path / "tb",
        meta={"exp": 7},
    )
    model.fit(
        x, y, batch_size=32, epochs=12, validation_split=0.25, verbose=0, callbacks=[callback]
    )
    runs = read_runs(tmp_path / "run")
    assert len(runs) == 1 and runs[0]["status"] == "closed"
    meta = runs[0]["meta"]
    assert (meta["framework"], meta["keras_backend"], meta["policy"], meta["exp"]) == (
        "keras",
        "torch",
        "rescue",
        7,
    )
    assert meta["steps"] == callback.batches == 12 * 24
    stored = read_metrics(tmp_path / "run")
    steps, losses = callback.batch_losses
    assert stored["loss"][0] == steps.tolist()
    np.testing.assert_array_equal(stored["loss"][1], losses)
    assert len(stored["val_loss"][0]) == 12  # one per epoch
    for name in ("param_distance", "update_ratio", "grad_norm", "lr/0", "lr_multiplier"):
        assert stored[name][0], name
    assert stored["lr/0"][1][-1] == pytest.approx(1e-4)  # the user's LR, not the product
    assert stored["lr_multiplier"][1][-1] == pytest.approx(callback.lr_multiplier)

    kinds = [e["kind"] for e in read_events(tmp_path / "run")]
    assert {"state", "finding", "action", "action_outcome"} <= set(kinds)
    run = load_run(tmp_path / "run")
    assert [(f.cause, f.step) for f in run.findings] == [
        (f.cause, f.step) for f in callback.findings
    ]
    assert [(a.name, a.step, a.outcome) for a in run.actions] == [
        (a.name, a.step, a.outcome) for a in callback.actions
    ]
    assert [(p.series, p.start) for p in run.plateaus] == [
        (p.series, p.start) for p in callback.plateaus
    ]
    report = (tmp_path / "run" / "report.html").read_text()
    assert "lr_too_low" in report and "framework" in report

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == stored["loss"][0]


def test_each_fit_is_one_run_in_the_store(tmp_path: Path) -> None:
    model = _model(lr=1e-2)
    x, y = _data(256)
    callback = UnstuckCallback("observe", console=False, run_dir=tmp_path, report=False)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[callback])
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
    from unstuck.record import read_metrics, read_runs

    runs = read_runs(tmp_path)
    assert [r["status"] for r in runs] == ["closed", "closed"]
    first = read_metrics(tmp_path, runs[0]["run_id"], names=["loss"])["loss"][0]
    second = read_metrics(tmp_path, runs[1]["run_id"], names=["loss"])["loss"][0]
    assert first == list(range(24)) and second == list(range(24, 40))  # steps run on
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"run_dir": 3}, TypeError, "^UnstuckCallback: run_dir must be a directory path"),
        ({"tensorboard": 3}, TypeError, "^UnstuckCallback: tensorboard must be a directory"),
        ({"mlflow": "yes"}, TypeError, "^UnstuckCallback: mlflow must be True, False or"),
    ],
)
def test_bad_recording_arguments_fail_when_the_callback_is_built(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        UnstuckCallback(**kwargs)


def test_an_unwritable_run_dir_fails_before_the_first_batch(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = _model()
    x, y = _data(64)
    callback = UnstuckCallback(console=False, run_dir=blocker / "run")
    with pytest.raises(ValueError, match="is not writable"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    assert callback.batches == 0


def test_defaults_and_argument_shapes_match_the_other_front_ends() -> None:
    """policy defaults to observe and run_dir is the second positional argument, as for the
    Guard and the Lightning and HF callbacks; monitor_val names a logs key (or None)."""
    import inspect

    import unstuck

    callback = UnstuckCallback()
    assert callback._policy.name == "observe"
    keras_params = list(inspect.signature(UnstuckCallback).parameters)
    assert keras_params[:2] == ["policy", "run_dir"]
    assert inspect.signature(unstuck.Guard).parameters["policy"].default == "observe"
    assert UnstuckCallback(monitor_val="val_mae").monitor_val == "val_mae"
    assert UnstuckCallback(monitor_val=True).monitor_val == "val_loss"
    assert UnstuckCallback(monitor_val=False).monitor_val is None
    with pytest.raises(TypeError, match="monitor_val must be the logs key"):
        UnstuckCallback(monitor_val=3)


def test_monitor_val_watches_the_named_metric() -> None:
    model = _model()
    model.compile(
        keras.optimizers.SGD(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = _data(256)
    callback = UnstuckCallback(monitor_val="val_accuracy", console=False)
    model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25, verbose=0, callbacks=[callback])
    watched = callback.evidence.series("val_loss")[1]
    assert len(watched) == 3
    assert all(0.0 <= v <= 1.0 for v in watched)  # accuracies, not the loss
