"""Log hygiene and reader slips found on real logs (shared/wild_logs RESULTS.md, problem 4 and
"Other problems"). Each test writes a small synthetic stand-in of the real log's shape."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from unstuck.analyze import load
from unstuck.analyze.hygiene import clean_series, continuous_steps
from unstuck.cli.main import main
from unstuck.record.rundata import RunData


def _write(path: pathlib.Path, lines: list[str], newline: str = "\n") -> pathlib.Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


def _notes(run: RunData) -> str:
    return " | ".join(run.meta.get("notes", []))


def _steps(run: RunData, name: str) -> list[int]:
    return [int(s) for s in run.series[name][0]]


def _values(run: RunData, name: str) -> list[float]:
    return [float(v) for v in run.series[name][1]]


# --- steps that go backwards -------------------------------------------------------------------


def test_a_step_counter_restarting_every_epoch_is_made_continuous(tmp_path: pathlib.Path) -> None:
    """text_gpt2_lora: ``Epoch 1 | Step 0/651``; a printed config's ``epochs: 2`` and
    ``Total training steps: 1302`` are counts, not the x axis."""
    lines = [
        "INFO:__main__:Configuration:",
        "INFO:__main__:  epochs: 2",
        "INFO:__main__:  warmup_steps: 100",
        "INFO:__main__:🎯 Total training steps: 1302",
    ]
    for epoch in range(2):
        for step in range(0, 651, 10):
            loss = 3.0 / (1 + epoch * 651 + step) + 0.5
            lines.append(
                f"INFO:__main__:Epoch {epoch} | Step {step:4d}/651 | Loss: {loss:.4f} | "
                f"LR: 1.00e-04 | Grad: 0.300"
            )
    run = load(_write(tmp_path / "train.log", lines))
    steps = _steps(run, "loss")
    assert len(steps) == 2 * 66
    assert steps == sorted(set(steps))  # no step shared by the two epochs
    assert steps[65:67] == [650, 660]  # epoch 1 starts one stride after epoch 0 ends
    values = _values(run, "loss")
    assert values == sorted(values, reverse=True)  # the curve falls, no zigzag
    assert "restarts every epoch" in _notes(run)


def test_resumed_runs_keep_the_surviving_trajectory(tmp_path: pathlib.Path) -> None:
    """text_anya_hw: the counter goes back to 1300 twice; the last run is what is kept."""
    lines = []
    for run_no, epochs in enumerate((30, 2, 20)):
        step = 0
        for epoch in range(epochs):
            for _ in range(2):
                step += 1300
                loss = 5.0 - run_no - step / 1e5
                lines.append(
                    f"2025-01-06 15:04:15,292 INFO: Epoch: {epoch}/{epochs}, "
                    f"Iteration step: {step}, loss: {loss}"
                )
            lines.append(f"2025-01-06 15:13:20,051 INFO: ====Epoch: {epoch}/50,top 1 acc: 0.03====")
    run = load(_write(tmp_path / "train.log", lines))
    assert _steps(run, "loss") == list(range(1300, 40 * 1300 + 1, 1300))
    assert all(v < 3.0 for v in _values(run, "loss"))  # only the third run's values
    notes = _notes(run)
    assert "3 runs" in notes and "the last is analysed" in notes


def test_a_run_resumed_from_a_checkpoint_keeps_its_start(tmp_path: pathlib.Path) -> None:
    """Steps 0..100, then a resume at 60: later records replace earlier ones from step 60 on,
    the points before it stay."""
    rows = ["step,loss"]
    rows += [f"{s},{1.0 + 0 * s}" for s in range(0, 101, 5)]
    rows += [f"{s},{2.0}" for s in range(60, 201, 5)]
    run = load(_write(tmp_path / "log.csv", rows))
    steps, values = _steps(run, "loss"), _values(run, "loss")
    assert steps == list(range(0, 201, 5))
    assert values == [1.0] * 12 + [2.0] * 29  # 0..55 from the first run, 60.. from the resume
    assert "resumed from a checkpoint" in _notes(run)


def test_several_runs_pasted_into_one_printout_analyse_the_last(tmp_path: pathlib.Path) -> None:
    """text_gpt2_logmd: one run after another in a markdown file (the last starts at step 1)."""
    lines: list[str] = []
    for run_no in range(4):
        lines += ["", f"Run {run_no}: tried something", "```", "Using device: cuda"]
        lines += ["loaded 338025 tokens", "1 epoch = 20 batches"]
        first = 1 if run_no == 3 else 0
        n = 60 if run_no == 3 else 50
        lines += [f"step {s}, loss: {10.0 - run_no - s / 100:.4f}" for s in range(first, first + n)]
        lines += ["```"]
    run = load(_write(tmp_path / "log.md", lines))
    assert _steps(run, "loss") == list(range(1, 61))
    assert _values(run, "loss")[0] == pytest.approx(10.0 - 3 - 0.01)
    assert "4 runs" in _notes(run)
    assert "epoch" not in run.series  # "1 epoch = 20 batches" is a count, not an epoch


def test_a_csvlogger_file_appended_by_restarted_runs(tmp_path: pathlib.Path) -> None:
    """keras_brain_tumor: four fresh starts in one CSVLogger file (epochs 0-4, 0-3, 0-9, 0-4)."""
    rows = ["epoch,accuracy,learning_rate,loss,val_accuracy,val_loss"]
    for run_no, epochs in enumerate((5, 4, 10, 5)):
        rows += [
            f"{e},0.5,0.0001,{1.2 - e / 10 + run_no},0.6,{1.1 - e / 10 + run_no}"
            for e in range(epochs)
        ]
    path = _write(tmp_path / "training_log.csv", rows, newline="\r\n")
    run = load(path)
    assert run.meta["step_unit"] == "epoch"
    assert _steps(run, "loss") == [0, 1, 2, 3, 4]
    assert _values(run, "loss") == pytest.approx([4.2, 4.1, 4.0, 3.9, 3.8])
    assert _steps(run, "val_loss") == [0, 1, 2, 3, 4]
    assert "4 runs" in _notes(run) and "loss: 5 points" in _notes(run)


def test_a_generic_csv_of_restarted_runs_stays_on_its_epoch_axis(tmp_path: pathlib.Path) -> None:
    """An epoch met again after the epoch went back is another run, not a second point in it."""
    rows = ["epoch,train_loss,acc"]
    rows += [f"{e},{1.0 - e / 100},0.5" for e in range(20)]
    rows += [f"{e},{0.5 - e / 100},0.6" for e in range(30)]
    path = _write(tmp_path / "history.csv", rows)
    run = load(path)
    assert run.meta["step_unit"] == "epoch"
    assert _steps(run, "loss") == list(range(30))
    assert "2 runs" in _notes(run)


def test_points_sharing_a_step_in_a_row_are_no_restart() -> None:
    """Gradient accumulation logs one step several times: nothing is dropped, no note."""
    steps = [0, 0, 1, 1, 2, 2]
    raw = {"loss": (steps, [1.0, 1.1, 0.9, 1.0, 0.8, 0.9])}
    out, notes = clean_series(raw)
    assert list(out["loss"][0]) == steps and notes == []


def test_continuous_steps_leaves_a_restart_within_an_epoch_alone() -> None:
    steps: list[int | None] = [0, 10, 20, 0, 10]
    assert continuous_steps(steps, [0, 0, 0, 0, 0]) == (steps, None)
    made, note = continuous_steps(steps, [0, 0, 0, 1, 1])
    assert made == [0, 10, 20, 30, 40] and note is not None


def test_per_epoch_tags_with_their_own_counter_are_left_out() -> None:
    """tb_fractaldb: ``valid_loss_step/epoch_N`` counts batches 0-156 within epoch N."""
    raw = {
        "train_loss": (list(range(49, 3900, 50)), list(np.linspace(3, 1, 78))),
        "valid_loss_step/epoch_0": (list(range(157)), [2.0] * 157),
        "valid_loss_step/epoch_1": (list(range(157)), [1.5] * 157),
        "valid_loss_epoch": ([1718, 3437], [2.0, 1.5]),
    }
    out, notes = clean_series(raw)
    assert set(out) == {"train_loss", "valid_loss_epoch"}
    assert "2 per-epoch tags left out" in notes[0]


def test_per_epoch_tensorboard_tags_are_not_analysed(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "version_0"))
    for step in range(49, 3900, 50):
        writer.add_scalar("train_loss_step", 3.0 - step / 2000, step)
    for epoch in range(2):
        for batch in range(40):
            writer.add_scalar(f"valid_loss_step/epoch_{epoch}", 2.0 + math.sin(batch), batch)
        writer.add_scalar("valid_loss_epoch", 2.0 - epoch / 4, 1718 * (epoch + 1))
    writer.close()
    run = load(tmp_path / "version_0")
    assert not [n for n in run.series if "epoch_0" in n or "epoch_1" in n]
    assert "per-epoch tag" in _notes(run)
    assert _steps(run, "val_loss") == [1718, 3436]


# --- reader slips ------------------------------------------------------------------------------


def test_nll_loss_is_the_training_loss(tmp_path: pathlib.Path) -> None:
    """light_opal: opal-v2 logs only ``train/nll_loss`` (and a ``val/rmse_loss``)."""
    rows = ["epoch,lr-Adam,step,train/nll_loss,val/rmse_loss"]
    for step in range(49, 2000, 50):
        rows += [f",0.003,{step},,", f"{step // 700},,{step},{0.06 - step / 1e5},"]
    rows += ["2,,1900,,0.2"]
    run = load(_write(tmp_path / "metrics.csv", rows))
    assert "loss" in run.series and len(_steps(run, "loss")) == 40
    assert run.meta["names"]["train/nll_loss"] == "loss"
    assert "val/rmse_loss" in run.series  # an RMSE is not a validation *loss* to compare


DSFD = """Timer: 1.6476
epoch:{e} || iter:{i} || Loss:{loss:.4f}
->> pal1 conf loss:{c1:.4f} || pal1 loc loss:4.9553
->> pal2 conf loss:{c2:.4f} || pal2 loc loss:5.2239
->>lr:0.0005"""


def test_dsfd_keeps_pal1_and_pal2_apart_and_reads_its_test_loss(tmp_path: pathlib.Path) -> None:
    """text_dsfd: ``pal1 conf loss`` and ``pal2 conf loss`` are two series; ``test epoch:N ||
    Loss:x`` is the held-out loss, at the step its epoch reached."""
    chunks = []
    i = 0
    for e in range(3):
        for _ in range(20):
            chunks.append(DSFD.format(e=e, i=i, loss=20 - i / 10, c1=10 - i / 100, c2=5 - i / 100))
            i += 10
        chunks.append(f"start eval..........\nTimer: 140.19\ntest epoch:{e} || Loss:{4 - e / 2}")
        chunks.append(f"Saving best state,epoch {e}")
    run = load(_write(tmp_path / "train.log", chunks))
    assert run.meta["step_unit"] == "step"
    assert len(_steps(run, "loss")) == 60
    assert len(_steps(run, "pal1_conf_loss")) == 60 and len(_steps(run, "pal2_conf_loss")) == 60
    assert _values(run, "pal1_conf_loss")[0] == pytest.approx(10.0)
    assert _values(run, "pal2_conf_loss")[0] == pytest.approx(5.0)
    assert _steps(run, "val_loss") == [190, 390, 590]
    assert _values(run, "val_loss") == pytest.approx([4.0, 3.5, 3.0])
    assert "without" not in _notes(run)  # no held-out line dropped as "rows without a step"


def test_a_word_before_a_name_stays_out_when_it_never_varies() -> None:
    from unstuck.analyze.text_log import parse_text

    records = parse_text("INFO train loss 0.5\nINFO train loss 0.4\nrank0 conf loss: 1\n")
    assert [sorted(r) for r in records] == [["train_loss"], ["train_loss"], ["conf_loss"]]


def test_llama_factory_current_steps_is_the_step(tmp_path: pathlib.Path) -> None:
    """jsonl_mistral_llamafactory: trainer_log.jsonl numbers its rows with ``current_steps``."""
    lines = [
        json.dumps(
            {
                "current_steps": s,
                "total_steps": 400,
                "loss": 2.5 - s / 400,
                "learning_rate": 1e-5,
                "epoch": s / 200,
                "percentage": s / 4,
                "elapsed_time": "0:00:24",
            }
        )
        for s in range(10, 401, 10)
    ]
    run = load(_write(tmp_path / "trainer_log.jsonl", lines))
    assert run.meta["step_unit"] == "step"
    assert _steps(run, "loss") == list(range(10, 401, 10))


def test_an_epoch_line_printing_train_and_val_metrics_stays_on_epochs(
    tmp_path: pathlib.Path,
) -> None:
    """text_mt_en2zh: ``Token Acc`` twice per epoch line (train and val), profiler lines with
    numbers between them: the x axis is the epoch, not the record number."""
    lines = ["Starting Training From Epoch 0"]
    for e in range(12):
        lines += [
            "STAGE:2025-04-07 10:29:46 22264:22264 ActivityProfilerController.cpp:314] "
            "Completed Stage: Warm Up",
            "STAGE:2025-04-07 10:29:47 22264:22264 ActivityProfilerController.cpp:320] "
            "Completed Stage: Collection",
            f"Epoch {e} |             Train Loss: {11 - e / 10:.4f} | Token Acc: 0.0{e:02d} | "
            f"Seq Acc: 0.0000 |             Val Loss: {10.9 - e / 10:.4f} | Token Acc: 0.1{e:02d}"
            " | Seq Acc: 0.0000",
        ]
    run = load(_write(tmp_path / "train.log", lines))
    assert run.meta["step_unit"] == "epoch"
    assert _steps(run, "loss") == list(range(12))
    assert _steps(run, "val_loss") == list(range(12))
    assert _values(run, "Token_Acc")[1] == pytest.approx(0.001)
    assert _values(run, "Val_Token_Acc")[1] == pytest.approx(0.101)


def test_a_model_summary_is_no_row_without_a_step(tmp_path: pathlib.Path) -> None:
    """text_shakespeare_gpt: the printed model summary's numbers are not skipped log rows."""
    lines = [
        "using device: mps",
        "loaded 338025 tokens",
        "1 epoch = 10 batches",
        "Total Parameters: 124,475,904",
        "Trainable Parameters: 124,475,904",
    ]
    lines += [f"      └─Block {b}: (7,087,872 parameters)" for b in range(12)]
    lines += [f"step {s}, loss: {10 - s / 10:.4f}, norm: 1.0, tok/sec: 5000" for s in range(26)]
    run = load(_write(tmp_path / "log.md", lines))
    assert run.meta["step_unit"] == "step"
    assert "without" not in _notes(run)
    assert len(_steps(run, "loss")) == 26


def test_the_cli_prints_the_hygiene_note(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["epoch,loss,val_loss"]
    for epochs in (5, 4, 10, 5):
        rows += [f"{e},{1.2 - e / 20},{1.1 - e / 20}" for e in range(epochs)]
    path = _write(tmp_path / "training_log.csv", rows)
    before = path.read_bytes()
    assert main(["analyze", str(path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "note: the log holds 4 runs" in out
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_run_picks_another_run_of_the_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--run N`` numbers the runs of a file from 1; one the file does not hold is one line."""
    rows = ["epoch,loss,val_loss"]
    for run_no, epochs in enumerate((5, 4, 10, 5)):
        rows += [f"{e},{run_no + 1 - e / 20},{run_no + 1.1 - e / 20}" for e in range(epochs)]
    path = _write(tmp_path / "training_log.csv", rows)
    run = load(path, run="3")
    assert _steps(run, "loss") == list(range(10))
    assert _values(run, "loss")[0] == pytest.approx(3.0)
    assert "run 3 (--run 3) is analysed" in _notes(run)
    assert main(["analyze", str(path), "--no-report", "--run", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds 4 runs (--run 1 to 4)" in err
    assert main(["analyze", str(path), "--no-report", "--run", "last"]) == 2
    assert "pick one by its number, 1 to 4" in capsys.readouterr().err


def test_a_series_missing_from_some_runs_is_left_out_of_a_picked_run() -> None:
    raw = {
        "loss": ([0, 1, 2, 0, 1, 2], [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]),
        "val_loss": ([0, 1, 2], [9.0, 8.0, 7.0]),  # logged in one of the two runs only
    }
    out, notes = clean_series(raw, "epoch", run=1)
    assert list(out) == ["loss"] and list(out["loss"][1]) == [3.0, 2.0, 1.0]
    assert any("val_loss" in n and "left out" in n for n in notes)
    with pytest.raises(ValueError, match="holds 2 runs"):
        clean_series(raw, "epoch", run=3)


def test_a_long_format_csv_splits_its_loss_by_the_type_column(tmp_path: pathlib.Path) -> None:
    """csv_gptlab_120m: ``step,type,loss,...`` where ``type`` is train or val and only the val
    rows carry a loss: it is the validation loss, not the training loss."""
    rows = ["step,type,loss,cumulative_time_ms"]
    for step in range(0, 2001):
        if step % 100 == 0:
            rows.append(f"{step},val,{10.8 * math.exp(-step / 900) + 3:.4f},{step * 700}")
        else:
            rows.append(f"{step},train,,{step * 700}")
    run = load(_write(tmp_path / "metrics.csv", rows))
    assert "loss" not in run.series  # the train rows hold no loss
    assert len(_steps(run, "val_loss")) == 21
    assert run.meta["names"]["val_loss"] == "val_loss"
    assert "'type' column" in _notes(run)
    # with train losses too, each split gets its own series
    rows = ["step,split,loss"]
    for step in range(0, 400):
        rows.append(f"{step},train,{2.0 / (1 + step / 50):.4f}")
        if step % 50 == 49:
            rows.append(f"{step},validation,{2.2 / (1 + step / 60):.4f}")
    run = load(_write(tmp_path / "long.csv", rows))
    assert len(_steps(run, "loss")) == 400 and len(_steps(run, "val_loss")) == 8
    assert max(_values(run, "val_loss")) > 0.5 > min(_values(run, "loss"))


def test_a_metric_already_named_by_its_split_keeps_its_name(tmp_path: pathlib.Path) -> None:
    rows = ["step,phase,train_loss,val_loss"]
    for step in range(0, 200):
        rows.append(f"{step},train,{1.0 / (1 + step / 20):.4f},")
        if step % 20 == 19:
            rows.append(f"{step},val,,{1.1 / (1 + step / 25):.4f}")
    run = load(_write(tmp_path / "m.csv", rows))
    assert len(_steps(run, "loss")) == 200 and len(_steps(run, "val_loss")) == 10
    assert not any(name.startswith(("train_train", "val_val")) for name in run.series)
