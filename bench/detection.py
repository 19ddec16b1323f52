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

``--quick`` runs 3 short curves per family and a third of the real runs (under 2 minutes on 2
cores). Results go to ``bench/results/detection.json`` (git-ignored) unless ``--json`` says
otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
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
