"""The shared vocabulary as types: detector states and frame series.

A state is a ``DetectorState`` (a ``str``), so runs stored as plain strings still compare; the
groupings the pipeline reads are defined once in ``unstuck.types``. A frame value that is a
scalar series is a ``Series``, told apart by its type rather than by its shape.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from conftest import guarded_run_with_every_tap
from unstuck.detect import PlateauDetector
from unstuck.signals.host import Frame, Series
from unstuck.signals.hub import SignalHub
from unstuck.types import (
    ACT_ON_STATES,
    DETECTOR_STATES,
    DIAGNOSE_ON,
    FLAT_STATES,
    NOTABLE_STATES,
    UNSTABLE_STATES,
    DetectorState,
    primitive,
)


def test_states_compare_hash_and_serialise_as_their_strings():
    assert tuple(s.value for s in DetectorState) == DETECTOR_STATES
    assert "plateau" in ACT_ON_STATES and DetectorState("plateau") is DetectorState.PLATEAU
    assert json.dumps({"to": DetectorState.HIDDEN_PROGRESS}) == '{"to": "hidden_progress"}'
    stored = primitive({"state": DetectorState.SLOW})["state"]
    assert type(stored) is str and stored == "slow"


def test_groupings_nest_as_the_pipeline_reads_them():
    # Acting implies notable implies diagnosing; improving and unknown are in none of them.
    assert UNSTABLE_STATES < ACT_ON_STATES < NOTABLE_STATES < DIAGNOSE_ON
    assert FLAT_STATES <= NOTABLE_STATES and not FLAT_STATES & UNSTABLE_STATES
    quiet = {DetectorState.IMPROVING, DetectorState.UNKNOWN}
    assert not quiet & DIAGNOSE_ON
    assert DIAGNOSE_ON | quiet == set(DetectorState)


def test_a_detector_state_dict_holds_a_plain_string_and_loads_back_a_state():
    detector = PlateauDetector("train")
    for step in range(200):
        detector.update(step, 1.0)  # flat from the start
    assert detector.state == DetectorState.PLATEAU
    state = detector.state_dict()
    assert type(state["state"]) is str
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = PlateauDetector("train")
    fresh.load_state_dict(loaded)
    assert fresh.state is DetectorState.PLATEAU


def test_every_series_a_guard_flushes_is_a_series(monkeypatch):
    frames: list[Frame] = []
    flush = SignalHub.flush

    def keep(self: SignalHub) -> Frame:
        frame = flush(self)
        frames.append(frame)
        return frame

    monkeypatch.setattr(SignalHub, "flush", keep)
    guarded_run_with_every_tap(steps=20)
    names = set()
    for frame in frames:
        for name, value in frame.signals.items():
            shaped = isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list)
            assert not shaped or isinstance(value, Series), f"{name} is a bare tuple"
        names |= set(frame.series())
    # The series the rules and the store read most, from taps of every kind.
    assert {"loss", "grad_norm", "update_ratio", "param_distance", "lr/0", "clip_rate"} <= names
    assert {"samples_seen", "loss_component/mse", "second_moment_ratio"} <= names


def test_engine_events_carry_a_typed_record_fixed_when_made():
    """An engine event carries its record typed (no parsing back from a dict) and fixed at the
    moment it was made: the engine keeps changing its own record (a verdict later), and the
    event of the start must still say ``pending``."""
    from unstuck.types import ActionRecord, EngineEvent

    record = ActionRecord("lr_scale", 49, "test", params={"factor": 2.0})
    started = EngineEvent.action(record)
    record.outcome = "kept"
    judged = EngineEvent.outcome(record)
    assert started.record is not None and started.record.outcome == "pending"
    assert started.payload["outcome"] == "pending" and judged.payload["outcome"] == "kept"
    assert isinstance(judged.record, ActionRecord) and judged.record is not record
    kind, payload = judged  # still reads as the (kind, payload) pair
    assert (kind, payload["name"]) == ("action_outcome", "lr_scale") and judged[0] == kind
    reading = EngineEvent.probe({"probe": "lr_range_test", "best": np.float64(3.0)})
    assert reading.record is None and type(reading.payload["best"]) is float
    assert (
        not started.rolled_back
        and EngineEvent.outcome(ActionRecord("lr_scale", 1, "t", outcome="rolled_back")).rolled_back
    )
