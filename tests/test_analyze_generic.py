"""``unstuck analyze`` on logs no framework wrote: any CSV, JSON lines, a console printout.

The committed fixtures (``csv``, ``jsonl``, ``text``, ``keras_text``) go through the whole
battery of ``test_analyze.py``; these tests pin the parts of each reader the fixtures do not
reach: W&B's export layout, HF's printed dicts, logs with no step, cut-off and bad lines, and
which of two loss aliases is analysed.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from unstuck.analyze import LogFormatError, analyze, detect_format, load, summary
from unstuck.analyze.text_log import MIN_TEXT_RECORDS, parse_text
from unstuck.cli.main import main


def _falling(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2.0 * np.exp(-np.arange(n) / 40) + 0.3 + 0.01 * rng.standard_normal(n)


def _write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wandb_export_drops_the_band_and_the_run_name(tmp_path: pathlib.Path) -> None:
    loss = _falling(50)
    head = '"Step","run-7 - train/loss","run-7 - train/loss__MIN","run-7 - train/loss__MAX"'
    rows = [f"{10 * i},{v},{v - 1},{v + 1}" for i, v in enumerate(loss.tolist())]
    path = _write(tmp_path / "export.csv", [head, *rows])
    assert detect_format(path) == "csv"
    run = load(path)
    steps, values = run.series["loss"]
    assert steps.tolist() == list(range(0, 500, 10))
    np.testing.assert_array_equal(values, loss)  # the band columns were not read as the loss
    assert set(run.series) == {"loss"} and run.meta["run"] == "run-7"


def test_wandb_export_of_two_runs_needs_run(tmp_path: pathlib.Path) -> None:
    head = "Step,a - loss,b - loss"
    rows = [f"{i},{1 / (i + 1)},{2 / (i + 1)}" for i in range(30)]
    path = _write(tmp_path / "two.csv", [head, *rows])
    with pytest.raises(LogFormatError, match=r"2 W&B runs .*: a, b; pass one with --run"):
        load(path)
    assert load(path, run="b").series["loss"][1][0] == 2.0
    with pytest.raises(LogFormatError, match="no run 'c'"):
        load(path, run="c")
    with pytest.raises(LogFormatError, match="holds one run"):
        load(_write(tmp_path / "one.csv", ["step,loss", "0,1.0", "1,0.5"]), run="b")


def test_pandas_csv_without_a_step_is_numbered_in_order(tmp_path: pathlib.Path) -> None:
    loss = _falling(40)
    path = _write(tmp_path / "df.csv", [",loss,acc", *(f"{i},{v},0.5" for i, v in enumerate(loss))])
    run = load(path)
    assert run.meta["step_unit"] == "record"
    assert "no step" in run.meta["notes"][0]
    assert set(run.series) == {"loss", "acc"}  # the unnamed index column is not a series
    assert run.series["loss"][0].tolist() == list(range(40))


def test_json_lines_wandb_history_and_a_cut_off_last_line(tmp_path: pathlib.Path) -> None:
    loss = _falling(30)
    lines = [
        json.dumps({"_step": i, "_runtime": 3.0 * i, "_timestamp": 1.7e9 + i, "loss": v})
        for i, v in enumerate(loss)
    ]
    path = _write(tmp_path / "wandb-history.jsonl", [*lines, '{"_step": 30, "lo'])
    assert detect_format(path) == "jsonl"
    run = load(path)
    assert set(run.series) == {"loss"}  # W&B's bookkeeping keys are dropped
    assert run.series["loss"][0].tolist() == list(range(30))
    assert any("cut off" in note for note in run.meta["notes"])
    bad = _write(tmp_path / "bad.jsonl", [lines[0], "not json", lines[1]])
    with pytest.raises(LogFormatError, match="line 2 is not JSON"):
        load(bad)


def test_hf_printed_dicts_are_a_console_log_numbered_in_order(tmp_path: pathlib.Path) -> None:
    loss = _falling(60)
    lines = []
    for i, v in enumerate(loss):
        lines.append(str({"loss": float(v), "learning_rate": 5e-05, "epoch": round(i / 60, 2)}))
        if i % 10 == 9:
            lines.append(str({"eval_loss": float(v) + 0.1, "epoch": round(i / 60, 2)}))
    path = _write(tmp_path / "stdout.txt", lines)
    assert detect_format(path) == "text"  # a Python dict, not HF's trainer_state.json
    run = load(path)
    assert run.meta["step_unit"] == "record"
    steps, values = run.series["loss"]
    np.testing.assert_allclose(values, loss, rtol=1e-12)
    assert steps[9] == 9 and steps[10] == 11  # the eval line between them has its own number
    assert run.series["val_loss"][0].tolist()[:2] == [10, 21]


def test_mnist_example_lines_number_the_points_within_epochs(tmp_path: pathlib.Path) -> None:
    loss = _falling(90)
    lines = [
        f"Train Epoch: {i // 30 + 1} [{(i % 30) * 640}/60000 ({i % 30 * 3}%)]\tLoss: {v:.6f}"
        for i, v in enumerate(loss)
    ]
    run = load(_write(tmp_path / "mnist.log", lines))
    assert run.meta["step_unit"] == "record"
    assert "several points per epoch" in run.meta["notes"][0]
    assert run.series["epoch"][1].tolist() == [1.0] * 30 + [2.0] * 30 + [3.0] * 30
    assert run.series["loss"][1].size == 90


def test_text_carries_the_epoch_and_skips_progress_bars_colour_and_units() -> None:
    text = (
        "Epoch 1/3\n"
        "\x1b[1m1/8\x1b[0m loss: 9.0"
        "\r\x1b[1m8/8\x1b[0m - 1s - 12ms/step - loss: 2.5 - val_loss: 2.6\n"
        "Epoch 2/3\n8/8 - 0s - time 3.5ms - loss: 2.0\n"
    )
    records = parse_text(text)
    assert records == [
        {"epoch": 1.0, "loss": 2.5, "val_loss": 2.6},  # the bar's last state, not 9.0
        {"epoch": 2.0, "loss": 2.0},  # "3.5ms" is glued to its unit: not a metric
    ]


def test_a_dense_loss_is_analysed_over_a_sparse_train_loss(tmp_path: pathlib.Path) -> None:
    loss = _falling(200)
    lines = []
    for i, v in enumerate(loss):
        lines.append(f"iter {i}: loss {v:.5f}")
        if i % 50 == 0:  # nanoGPT's eval line: too few points for the detector
            lines.append(f"step {i}: train loss {v:.5f}, val loss {v + 0.1:.5f}")
    run = load(_write(tmp_path / "nanogpt.log", lines))
    assert run.meta["names"]["loss"] == "loss" and run.series["loss"][1].size == 200
    assert run.series["train_loss"][1].size == 4  # kept under its own name
    series = {s["name"]: s for s in summary(analyze(run))["series"]}
    assert series["loss"]["points"] == 200 and series["loss"]["label"] == "train"


def test_too_few_loss_lines_is_no_log(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = _write(tmp_path / "notes.txt", ["we tried lr 0.1", "loss 2.3 after a while"])
    with pytest.raises(LogFormatError, match="no known log"):
        load(notes)
    assert main(["analyze", str(notes), "--format", "text", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"at least {MIN_TEXT_RECORDS} needed" in err


@pytest.mark.parametrize(
    ("template", "unit"),
    [
        # fairseq: the step is num_updates, the epoch a zero-padded prefix
        ("epoch 001: {i} / 900 loss={v:.4f}, ppl=3.1, lr=0.0005, num_updates={i}", "step"),
        # detectron2: the loss is the sum of its terms
        ("[d2.utils.events]:  eta: 0:20:00  iter: {i}  total_loss: {v:.4f}  loss_cls: 0.2", "step"),
        # Python logging around a hand-written format
        ("2024-05-01 10:00:00,001 - INFO - step {i} | loss {v:.4f} | lr 3.0e-04", "step"),
        # Lightning's progress bar, one line per epoch once captured
        ("Epoch {i}: 100%|##| 50/50 [00:01<00:00, 30.0it/s, v_num=0, train_loss={v:.4f}]", "epoch"),
    ],
)
def test_printouts_of_common_tools_give_the_loss_over_their_axis(
    tmp_path: pathlib.Path, template: str, unit: str
) -> None:
    loss = _falling(40)
    path = _write(tmp_path / "out.log", [template.format(i=i, v=v) for i, v in enumerate(loss)])
    run = load(path)
    assert run.format == "text" and run.meta["step_unit"] == unit
    steps, values = run.series["loss"]
    assert steps.tolist() == list(range(40))
    np.testing.assert_allclose(values, loss, atol=5e-5)
