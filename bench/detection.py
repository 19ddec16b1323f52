"""Plateau-detection benchmark: unstuck's PlateauDetector against the rules people use.

    python bench/detection.py [--quick] [--json PATH] [--seed N] [--workers N]

Curves: the labeled synthetic families of ``bench/curves.py`` plus the recorded real runs in
``bench/data/real_curves.json[.gz]`` (family ``real``; train loss every step, val loss every 50
steps; labels from ``bench/record_real_curves.py``). Every detector is fed every curve point by
point, ``update(step, value, distance=...)``; the distance is passed when the curve has one at
that step (the baselines ignore it). A plateau *event* is a new entry in ``detector.plateaus``;
its detection step is the step of the ``update`` call at which it appeared.

Scoring (per curve, then summed):

* a detection is a true positive when its step lies in a labeled interval ``[s, e + tol]``
  with ``tol = 10 % of (e - s)``; each interval takes at most one true positive (the first
  detection in it, earliest interval first when extended intervals overlap); further
  detections in an interval that already has its true positive are *ignored* (neither TP nor
  FP); a detection in no interval is a false positive; an interval with no detection is a
  false negative. Precision, recall and F1 follow from the summed counts;
* false alarms per 10,000 steps: every detection on a no-plateau curve, divided by the steps
  those curves span, × 1e4 (over the no-plateau curves of the family, or of all families);
* latency: detection step of the true positive minus the labeled onset ``s``; the median over
  true positives is reported.

Family ``wild`` (when ``../shared/wild_logs/`` exists; one line says it is skipped otherwise):
the 51 real logs from public repositories, read in-process with ``unstuck.analyze.load`` and
scored by that folder's own ``run_wild.score`` (imported from it at run time, so the scoring is
the one RESULTS.md describes). unstuck runs as ``unstuck analyze`` does (``analyze`` +
``summary``); each baseline is fed the same loss series point by point and its firing is the
plateau ``[start, detected_at]``. Reported per split: plateau precision / recall / F1 (a clear
label found), false alarms per 10k loss points, logs without a clear plateau that got one, and
for unstuck the validation series that got a rise (``rising``/``diverging``) on the logs
labelled ``val_rising_from`` (and on the others). The logs are split **by log, before any
tuning**, by a fixed hash of the name (:func:`wild_split`): ``dev`` when the first byte of
``sha256(name)`` is even, else ``held_out``. Thresholds were calibrated on ``dev`` (and the
generated curves) only; ``held_out`` was run once the defaults were fixed.

``--quick`` runs 3 short curves per family and a third of the real runs (under 2 minutes on 2
cores). Results go to ``bench/results/detection.json`` (git-ignored) unless ``--json`` says
otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import gzip
import hashlib
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import BASELINE_NAMES, make_baselines
from curves import Curve, generate_curves

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.10
DEFAULT_DETECTOR = "unstuck.detect:PlateauDetector"
REAL_FAMILY = "real"
WILD_FAMILY = "wild"
WILD_DIR = HERE.parent.parent / "shared" / "wild_logs"  # ../shared/wild_logs from the repo
WILD_SPLITS = ("dev", "held_out")
MAX_LISTED = 20  # detection steps listed per curve and detector in the JSON


# ----------------------------------------------------------------------------- scoring


def score_curve(
    intervals: Sequence[tuple[int, int]], detections: Sequence[int], tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """TP/FP/FN/ignored counts and TP latencies for one curve (rules in the module doc)."""
    ivs = sorted((int(s), int(e)) for s, e in intervals)
    matched = [False] * len(ivs)
    tp = fp = ignored = 0
    latencies: list[float] = []
    for d in sorted(detections):
        hits = [k for k, (s, e) in enumerate(ivs) if s <= d <= e + tolerance * (e - s)]
        if not hits:
            fp += 1
            continue
        free = [k for k in hits if not matched[k]]
        if not free:
            ignored += 1
            continue
        k = free[0]
        matched[k] = True
        tp += 1
        latencies.append(float(d - ivs[k][0]))
    return {
        "tp": tp,
        "fp": fp,
        "fn": matched.count(False),
        "ignored": ignored,
        "latencies": latencies,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-curve rows (score_curve output + n_steps, no_plateau, n_det)."""
    tp = sum(r["tp"] for r in rows)
    fp = sum(r["fp"] for r in rows)
    fn = sum(r["fn"] for r in rows)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is not None and recall is not None and precision + recall > 0:
        f1: float | None = 2 * precision * recall / (precision + recall)
    elif precision is not None and recall is not None:
        f1 = 0.0
    else:
        f1 = None
    neg = [r for r in rows if r["no_plateau"]]
    neg_steps = sum(r["n_steps"] for r in neg)
    fa = sum(r["n_det"] for r in neg) / neg_steps * 1e4 if neg_steps else None
    lat = [x for r in rows for x in r["latencies"]]
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "false_alarms_per_10k": fa,
        "median_latency": statistics.median(lat) if lat else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "ignored": sum(r["ignored"] for r in rows),
        "detections": sum(r["n_det"] for r in rows),
        "errors": sum(1 for r in rows if r.get("error")),
        "n_curves": len(rows),
    }


# ----------------------------------------------------------------------------- real curves


def load_real_curves(path: Path | None = None, every: int = 1) -> list[Curve]:
    """Curves from the recorded real runs (train and val series of each run)."""
    if path is None:
        gz = HERE / "data" / "real_curves.json.gz"
        path = gz if gz.exists() else HERE / "data" / "real_curves.json"
    if not path.exists():
        print(f"warning: {path} missing; no real curves", file=sys.stderr)
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        doc = json.load(f)
    out: list[Curve] = []
    for run in doc["runs"][::every]:
        d_steps = np.asarray(run["distance_steps"], dtype=np.int64)
        d_vals = np.asarray([math.nan if v is None else v for v in run["distance"]])
        for series in ("train", "val"):
            steps = np.asarray(run[f"{series}_steps"], dtype=np.int64)
            values = np.asarray([math.nan if v is None else v for v in run[f"{series}_loss"]])
            dist = np.full(len(steps), math.nan)
            pos = np.searchsorted(steps, d_steps)
            ok = pos < len(steps)
            ok[ok] = steps[pos[ok]] == d_steps[ok]
            dist[pos[ok]] = d_vals[ok]
            labels = [(int(s), int(e)) for s, e in run[f"{series}_plateaus"]]
            out.append(
                Curve(
                    name=f"real/{run['name']}/{series}",
                    family=REAL_FAMILY,
                    steps=steps,
                    values=values,
                    distance=dist,
                    plateaus=labels,
                    no_plateau=not labels,
                    series=series,
                )
            )
    return out


# ----------------------------------------------------------------------------- wild logs


def wild_split(name: str) -> str:
    """The fixed split of a wild log, decided by its name alone (set before any tuning)."""
    return "dev" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "held_out"


def _wild_module(folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location("run_wild", folder / "run_wild.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _baseline_summary(run: Any, name: str) -> dict[str, Any]:
    """``unstuck analyze --json``'s shape for one baseline: its firings as plateaus."""
    from unstuck.analyze.analysis import SERIES_LABELS, loss_series

    series, plateaus = [], []
    for raw in loss_series(run):
        label = SERIES_LABELS.get(raw, raw)
        steps, values = run.series[raw]
        det: Any = make_baselines(label, "min")[name]
        for s, v in zip(steps.tolist(), values.tolist()):
            det.update(int(s), v)
        # Firings whose stretches [start, detected_at] overlap are one stall (RLROP firing
        # again and again without a new best), reported once, as unstuck reports a plateau.
        # Stretches that touch (the next starts at the point after the last one's call, as
        # Ray's re-armed window does) are one stall too.
        merged: list[list[int]] = []
        step_list = steps.tolist()
        for e in sorted(det.plateaus, key=lambda e: e.start):
            end = int(e.detected_at if e.detected_at is not None else e.start)
            k = bisect.bisect_right(step_list, merged[-1][1]) if merged else 0
            touch = step_list[k] if merged and k < len(step_list) else None
            if merged and (e.start <= merged[-1][1] or (touch is not None and e.start <= touch)):
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([int(e.start), end])
        for start, end in merged:
            plateaus.append({"series": label, "start": start, "end": end})
        series.append(
            {
                "name": raw,
                "label": label,
                "points": int(steps.size),
                "first_step": int(steps[0]) if steps.size else None,
                "last_step": int(steps[-1]) if steps.size else None,
                "final_state": det.state,
                "episodes": [],
            }
        )
    return {
        "format": run.format,
        "step_unit": run.meta.get("step_unit", "step"),
        "series": series,
        "plateaus": plateaus,
        "findings": [],
        "names": run.meta.get("names", {}),
    }


def _wild_log(args: tuple[str, str, bool]) -> list[dict[str, Any]]:
    """Every detector over one wild log, scored by run_wild.score; one row per detector."""
    short, folder_text, with_unstuck = args
    from unstuck.analyze import analyze, load
    from unstuck.analyze.analysis import summary

    folder = Path(folder_text)
    rw = _wild_module(folder)
    labels = json.loads((folder / "labels.json").read_text())
    sources = json.loads((folder / "sources.json").read_text())
    run = load(rw.log_path(short, sources[short]))
    docs: dict[str, dict[str, Any]] = {}
    if with_unstuck:
        docs["unstuck"] = summary(analyze(copy.deepcopy(run)))
    for name in BASELINE_NAMES:
        docs[name] = _baseline_summary(run, name)
    rows = []
    lab = labels[short]
    for name, doc in docs.items():
        out = {"rc": 0, "stdout": json.dumps(doc), "stderr": "", "wall": 0.0, "rss_mb": None}
        r = rw.score(short, lab, out)
        val_states = [
            state
            for a in (r["analysed"].get("val"),)
            if a
            for state in [a["final"], *(e[0] for e in a["episodes"])]
        ]
        rows.append(
            {
                "detector": name,
                "log": short,
                "split": wild_split(short),
                "hits": r["hits"],
                "false_alarms": r["false_alarms"],
                "ambiguous": r["ambiguous"],
                "labels_clear": r["labels_clear"],
                "labels_found": r["labels_found"],
                "points": r["points"],
                "val_rising_label": lab.get("val_rising_from") is not None,
                "val_rise_called": any(s in ("rising", "diverging") for s in val_states),
                "detected": [
                    [d["series"], d["start"], d["end"], d["verdict"]] for d in r["detected"]
                ][:MAX_LISTED],
            }
        )
    return rows


def summarize_wild(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """run_wild.py's totals over some logs of one detector."""
    hits = sum(r["hits"] for r in rows)
    fas = sum(r["false_alarms"] for r in rows)
    found = sum(r["labels_found"] for r in rows)
    clear = sum(r["labels_clear"] for r in rows)
    points = sum(r["points"] for r in rows)
    precision = hits / (hits + fas) if hits + fas else None
    recall = found / clear if clear else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    clean = [r for r in rows if r["labels_clear"] == 0]
    rising = [r for r in rows if r["val_rising_label"]]
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "false_alarms_per_10k": 1e4 * fas / points if points else None,
        "hits": hits,
        "false_alarms": fas,
        "ambiguous": sum(r["ambiguous"] for r in rows),
        "labels_found": found,
        "labels_clear": clear,
        "clean_logs_with_fa": sum(1 for r in clean if r["false_alarms"]),
        "clean_logs": len(clean),
        "val_rise_found": sum(r["val_rise_called"] for r in rising),
        "val_rise_labelled": len(rising),
        "val_rise_elsewhere": sum(r["val_rise_called"] for r in rows if not r["val_rising_label"]),
        "n_logs": len(rows),
        "points": points,
    }


def wild_table(title: str, stats: dict[str, dict[str, Any]]) -> str:
    head = (
        f"### {title}\n\n| detector | precision | recall | F1 | false alarms /10k pts | "
        "hit / FA / ambiguous | clean logs with FA | val rise found (elsewhere) |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | "
            f"{_fmt(s['false_alarms_per_10k'], 2)} | {s['hits']} / {s['false_alarms']} / "
            f"{s['ambiguous']} | {s['clean_logs_with_fa']} / {s['clean_logs']} | "
            f"{s['val_rise_found']} / {s['val_rise_labelled']} ({s['val_rise_elsewhere']}) |"
        )
    return "\n".join(lines)


def run_wild_family(
    folder: Path, with_unstuck: bool, workers: int, quick: bool
) -> dict[str, Any] | None:
    """The wild family: per split and detector, run_wild's totals (None when absent)."""
    if not (folder / "labels.json").exists() or not (folder / "run_wild.py").exists():
        print(f"wild: {folder} not found; family skipped")
        return None
    labels = json.loads((folder / "labels.json").read_text())
    names = sorted(k for k in labels if not k.startswith("_"))
    if quick:
        names = names[::3]
    jobs = [(n, str(folder), with_unstuck) for n in names]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_wild_log, jobs, chunksize=1))
    else:
        results = [_wild_log(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    detectors = (["unstuck"] if with_unstuck else []) + list(BASELINE_NAMES)
    splits = {
        split: {
            d: summarize_wild([r for r in rows if r["detector"] == d and r["split"] == split])
            for d in detectors
        }
        for split in WILD_SPLITS
    }
    for split in WILD_SPLITS:
        n = sum(1 for x in names if wild_split(x) == split)
        print(wild_table(f"wild, {split} split ({n} logs)", splits[split]) + "\n")
    return {
        "split_rule": "dev when sha256(log name)[0] is even, else held_out",
        "splits": splits,
        "logs": {split: [x for x in names if wild_split(x) == split] for split in WILD_SPLITS},
        "per_log": rows,
    }


# ----------------------------------------------------------------------------- running


def _factory(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def _feed(det: Any, curve: Curve, use_distance: bool) -> tuple[list[int], str | None, float]:
    detections: list[int] = []
    seen = 0
    dist = curve.distance if use_distance else None
    t0 = time.perf_counter()
    try:
        for k in range(len(curve.steps)):
            step = int(curve.steps[k])
            d = None
            if dist is not None and math.isfinite(dist[k]):
                d = float(dist[k])
            if d is None:
                det.update(step, float(curve.values[k]))
            else:
                det.update(step, float(curve.values[k]), distance=d)
            n = len(det.plateaus)
            if n > seen:
                detections.extend([step] * (n - seen))
                seen = n
    except Exception as exc:  # a crash is a result too: report it, keep the detections so far
        return detections, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    return detections, None, time.perf_counter() - t0


def run_curve(args: tuple[Curve, str | None]) -> list[dict[str, Any]]:
    """All detectors over one curve; one row per detector."""
    curve, spec = args
    detectors: dict[str, Any] = {}
    if spec:
        # A live run knows it records the parameter distance; so does a curve that has one.
        detectors["unstuck"] = _factory(spec)(
            series=curve.series, mode="min", distance_signal=curve.distance is not None
        )
    detectors.update(make_baselines(curve.series, "min"))
    rows = []
    for name, det in detectors.items():
        dets, err, secs = _feed(det, curve, use_distance=(name == "unstuck"))
        row = score_curve(curve.plateaus, dets)
        row.update(
            detector=name,
            curve=curve.name,
            family=curve.family,
            no_plateau=curve.no_plateau,
            n_steps=curve.n_steps,
            n_points=len(curve.steps),
            n_det=len(dets),
            detections=dets,
            error=err,
            seconds=secs,
        )
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def table(title: str, stats: dict[str, dict[str, Any]]) -> str:
    head = (
        f"### {title}\n\n| detector | precision | recall | F1 | false alarms /10k | "
        "median latency | TP | FP | FN | ignored |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | "
            f"{_fmt(s['false_alarms_per_10k'], 2)} | {_fmt(s['median_latency'], 0)} | "
            f"{s['tp']} | {s['fp']} | {s['fn']} | {s['ignored']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Plateau-detection benchmark.")
    ap.add_argument("--quick", action="store_true", help="3 short curves per family")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "detection.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detector", default=DEFAULT_DETECTOR, help="module:Class, or '' for none")
    ap.add_argument("--wild", type=Path, default=WILD_DIR, help="folder of the wild logs")
    ap.add_argument("--no-wild", action="store_true", help="skip the wild family")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.quick:
        curves = generate_curves(args.seed, n_per_family=3, max_points=2000)
        curves += load_real_curves(every=3)
    else:
        curves = generate_curves(args.seed)
        curves += load_real_curves()
    t_gen = time.perf_counter() - t0
    spec = args.detector or None
    if spec:
        try:
            _factory(spec)
        except (ImportError, AttributeError) as exc:
            print(f"warning: cannot import {spec} ({exc}); baselines only", file=sys.stderr)
            spec = None
    order = sorted(range(len(curves)), key=lambda i: -len(curves[i].steps))  # longest first
    jobs = [(curves[i], spec) for i in order]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_curve, jobs, chunksize=1))
    else:
        results = [run_curve(j) for j in jobs]
    rows = [r for rs in results for r in rs]
    t_run = time.perf_counter() - t0 - t_gen

    names = (["unstuck"] if spec else []) + list(BASELINE_NAMES)
    families = sorted({c.family for c in curves}, key=lambda f: (f == REAL_FAMILY, f))
    fam_stats = {
        fam: {
            n: summarize([r for r in rows if r["detector"] == n and r["family"] == fam])
            for n in names
        }
        for fam in families
    }
    overall = {n: summarize([r for r in rows if r["detector"] == n]) for n in names}
    secs = {n: sum(r["seconds"] for r in rows if r["detector"] == n) for n in names}
    for n in names:
        overall[n]["seconds"] = secs[n]

    for fam in families:
        fc = [c for c in curves if c.family == fam]
        title = (
            f"{fam} ({len(fc)} curves, {sum(1 for c in fc if c.no_plateau)} without plateau, "
            f"{sum(len(c.plateaus) for c in fc)} intervals)"
        )
        print(table(title, fam_stats[fam]) + "\n")
    print(
        table(
            f"overall ({len(curves)} curves, {sum(len(c.steps) for c in curves)} points)", overall
        )
    )
    errors = [r for r in rows if r["error"]]
    for r in errors[:10]:
        print(f"error: {r['detector']} on {r['curve']}: {r['error']}", file=sys.stderr)
    wild = None
    if not args.no_wild:
        print()
        wild = run_wild_family(args.wild, spec == DEFAULT_DETECTOR, args.workers, args.quick)
    total = time.perf_counter() - t0
    print(
        f"\ncurves built in {t_gen:.1f}s; detectors ran in {t_run:.1f}s "
        f"({args.workers} workers); total {total:.1f}s. CPU seconds per detector: "
        + ", ".join(f"{n} {secs[n]:.1f}" for n in names)
    )
    doc = {
        "n_curves": len(curves),
        "quick": args.quick,
        "seed": args.seed,
        "tolerance": TOLERANCE,
        "seconds": total,
        "detectors": overall,
        "families": fam_stats,
        "wild": None if wild is None else {k: v for k, v in wild.items() if k != "per_log"},
        "wild_per_log": None if wild is None else wild["per_log"],
        "per_curve": [
            {
                **{k: r[k] for k in ("detector", "curve", "family", "tp", "fp", "fn", "ignored")},
                "n_detections": r["n_det"],
                "detections": r["detections"][:MAX_LISTED],  # the first ones only
                "error": r["error"],
            }
            for r in rows
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.json}")
    return doc


if __name__ == "__main__":
    main()
