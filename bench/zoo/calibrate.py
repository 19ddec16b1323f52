"""Fit the per-rule confidence scales of ``unstuck.diagnose.calibration`` on a zoo run.

    python bench/zoo/calibrate.py /tmp/zoo_train_quick.json

Reads the run records of ``bench/zoo/run.py --json`` (the TRAIN split only: it refuses any
other), takes every finding the way ``metrics.reliability`` does (a cause at its highest
confidence in a run; right when it names the run's seeded cause; a healthy run's end states
left out) at the rule's own confidence (``raw_confidence``, recorded by the zoo), keyed by
``calibration_key`` (``lr_too_high/blow_up``: a reading of its own), and prints the table.
The method (docs/zoo.md "Calibration"): per rule (or reading) r with n_r findings, k_r of
them right, mean raw confidence c_r, a Beta prior worth PRIOR_FINDINGS findings centred on c_r
(the rule's own claim) gives the shrunk precision p_r = (k_r + PRIOR_FINDINGS·c_r) /
(n_r + PRIOR_FINDINGS), and the scale is p_r / c_r: a rule's mean confidence becomes its shrunk
precision on train, its findings keep their order. Rules without a finding keep scale 1, and so
do the causes the zoo seeds no fault for (``operators.NOT_IN_ZOO``): none of their findings can
be right there, so the zoo measures nothing of their precision.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def fit(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from unstuck.diagnose.calibration import CAP, PRIOR_FINDINGS, SCALES, calibration_key
    from zoo.metrics import END_STATES
    from zoo.operators import NOT_IN_ZOO

    points: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for r in runs:
        if not r.get("scored"):
            continue
        if r.get("split") != "train":
            raise SystemExit(f"{r['key']} is on the {r.get('split')} split: fit on train only")
        best: dict[str, dict[str, Any]] = {}  # each cause's most confident finding in the run
        for f in r.get("findings", []):
            if f["cause"] not in best or f["confidence"] > best[f["cause"]]["confidence"]:
                best[f["cause"]] = f
        for cause, p in r["ranking"]:
            if r["expected"] is None and cause in END_STATES:
                continue
            if cause in NOT_IN_ZOO:
                continue  # never seeded: every finding would count as wrong by construction
            f = best.get(cause, {})
            key = calibration_key(cause, f.get("reading"))
            raw = f.get("raw_confidence")
            if not isinstance(raw, (int, float)):  # undo the scale it ran with
                raw = min(float(p), CAP) / SCALES.get(key, SCALES.get(cause, 1.0))
            points[key].append((float(raw), cause == r["expected"]))
    table = {}
    for cause, pts in sorted(points.items()):
        n = len(pts)
        right = sum(ok for _, ok in pts)
        mean = sum(p for p, _ in pts) / n
        if mean <= 0:
            continue
        shrunk = (right + PRIOR_FINDINGS * mean) / (n + PRIOR_FINDINGS)
        table[cause] = {
            "findings": n,
            "right": right,
            "mean_raw": round(mean, 4),
            "shrunk_precision": round(shrunk, 4),
            "scale": round(shrunk / mean, 3),
        }
    return table


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: calibrate.py ZOO_TRAIN_JSON")
    data = json.loads(Path(args[0]).read_text())
    table = fit(data["runs"])
    print(json.dumps(table, indent=1))
    print("SCALES = {")
    for cause, row in table.items():
        print(f'    "{cause}": {row["scale"]},  # {row["right"]}/{row["findings"]} right')
    print("}")


if __name__ == "__main__":
    main()
