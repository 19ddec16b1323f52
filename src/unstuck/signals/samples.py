"""Samples seen, and per-sample losses with their ids and targets when the user gives them.

With ``ids`` and ``dataset_size`` this counts the distinct ids seen in each nominal epoch
(``dataset_size`` draws) and the share of the data set ever reached: an epoch that sees part of
the data (truncated) or the same few batches again and again (repeated) shows here. With
per-sample losses it keeps, per id, how many observations in a row the sample stayed unlearned
(``p(label) < 1/2``) or worse than chance (``p(label) < 1/C``), and summarises the current window:
who holds the loss, whether they are confidently wrong, whether they are one class. All host work
at a flush is proportional to the samples seen since the previous flush; per-id tables are
bounded by ``MAX_TRACKED_IDS``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, Reduction, Tap
from unstuck.signals.host import PERSIST_OBSERVATIONS, Series

__all__ = ["MAX_TRACKED_IDS", "PERSIST_OBSERVATIONS", "SamplesTap"]

MAX_TRACKED_IDS = 1 << 20  # bound on the per-id tables kept on the host
MAX_CLASSES = 1024  # class tables beyond this (token targets of a language model) are not kept
TOP_FRACTION = 0.05  # "top 5 % of samples": the share of loss they hold is the label-noise signal
HISTORY = 64  # nominal epochs / flushes kept in the bounded per-epoch and per-class histories
REPORT_IDS = 20  # ids named in a finding
UNLEARNED_LOSS = math.log(2.0)  # cross-entropy above ln 2: p(label) < 1/2, the label is not learned


class SamplesTap(Tap):
    """Counts samples and, given ids, summarises who is seen and who stays wrong."""

    name: ClassVar[str] = "samples"
    tier: ClassVar[CostTier] = "always"
    provides: ClassVar[frozenset[str]] = frozenset(
        {
            "samples_seen",
            "samples_per_step",
            "epoch_coverage",
            "epoch_new_ids",
            "epoch_overlap",
            "data_reach",
            "per_sample",
            "class_loss",
            "class_loss_history",
            "class_counts",
            "sample_groups",
        }
    )
    reduction: ClassVar[Reduction] = "local"  # each rank's own samples (rank 0 diagnoses)

    def __init__(self, dataset_size: int | None = None) -> None:
        if dataset_size is not None and dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        self.dataset_size = dataset_size
        self.samples_seen = 0
        self.loss_calls = 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        self._epoch_ids: set[int] = set()
        self._epoch_samples = 0
        self._prev_epoch_ids: set[int] = set()
        self._epoch_new = 0
        self._ever_seen: set[int] = set()
        self._reach_overflow = False
        self.epoch_coverage: list[float] = []  # distinct ids / dataset_size, per nominal epoch
        self.epoch_new_ids: list[float] = []  # ids first seen in the epoch / dataset_size
        self.epoch_overlap: list[float] = []  # share of the epoch's ids also in the previous one
        self.latest_loss: dict[int, float] = {}
        self.class_loss: dict[int, list[float]] = {}
        self.class_counts: Counter[int] = Counter()
        self._n_classes = 0
        self._streak_unlearned: dict[int, int] = {}
        self._streak_wrong: dict[int, int] = {}

    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        n = loss.numel() if loss.ndim else (ids.numel() if ids is not None else 0)
        self.samples_seen += n
        self.loss_calls += 1
        if ids is not None or loss.ndim:
            self._pending.append((step, loss, ids, targets))

    def collect(self) -> Packet:
        packet = Packet(host={"samples_seen": self.samples_seen, "loss_calls": self.loss_calls})
        if not self._pending:
            return packet
        per_sample = [p for p in self._pending if p[1].ndim]
        if per_sample:
            packet.tensors["per_sample_loss"] = torch.cat([p[1].float() for p in per_sample])
        ids = [p[2] for p in self._pending if p[2] is not None]
        if ids:
            packet.host["ids"] = torch.cat([i.reshape(-1) for i in ids]).cpu().tolist()
            packet.host["ids_with_loss"] = [
                i for p in per_sample if p[2] is not None for i in p[2].reshape(-1).cpu().tolist()
            ]
        targets = [p[3] for p in per_sample if p[3] is not None]
        if targets and len(targets) == len(per_sample):
            packet.host["targets"] = torch.cat([t.reshape(-1) for t in targets]).cpu().tolist()
        packet.host["last_step"] = self._pending[-1][0]
        self._pending = []
        return packet

    # -- flush (host) ---------------------------------------------------------------------
    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        step = host.get("last_step")
        if step is not None:
            out["samples_seen"] = Series([step], [float(host["samples_seen"])])
        calls = int(host.get("loss_calls", 0))
        if calls and "ids" in host:
            out["samples_per_step"] = float(host["samples_seen"]) / calls
        if "ids" in host:
            self._count_epochs(host["ids"])
            if self.epoch_coverage:
                out["epoch_coverage"] = list(self.epoch_coverage)
                out["epoch_new_ids"] = list(self.epoch_new_ids)
                out["epoch_overlap"] = list(self.epoch_overlap)
            if self.dataset_size is not None and not self._reach_overflow:
                out["data_reach"] = len(self._ever_seen) / self.dataset_size
        if "per_sample_loss" in host and step is not None:
            out.update(self._per_sample(host, int(step)))
        return out

    def _per_sample(self, host: dict[str, Any], step: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        losses = np.asarray(host["per_sample_loss"], dtype=np.float64)
        finite = losses[np.isfinite(losses)]
        if finite.size:
            ordered = np.sort(finite)[::-1]
            k = max(1, round(TOP_FRACTION * ordered.size))
            total = float(ordered.sum())
            out["per_sample"] = {
                "step": step,
                "mean": float(finite.mean()),
                "p50": float(np.median(finite)),
                "p90": float(np.quantile(finite, 0.9)),
                "max": float(ordered[0]),
                "top5_share": float(ordered[:k].sum() / total) if total > 0 else 0.0,
            }
        ids_with_loss = host.get("ids_with_loss", [])
        targets = host.get("targets")
        if targets is not None and len(targets) == losses.size:
            self._class_stats(losses, targets)
            if self.class_loss:
                out["class_loss"] = {c: v[-1] for c, v in self.class_loss.items()}
                out["class_loss_history"] = {c: list(v) for c, v in self.class_loss.items()}
                out["class_counts"] = {int(c): int(n) for c, n in self.class_counts.items()}
        if len(ids_with_loss) != losses.size:
            return out
        if targets is not None and len(targets) == losses.size and self._n_classes >= 2:
            groups = self._groups(ids_with_loss, losses, targets, step)
            if groups:
                out["sample_groups"] = groups
        for i, v in zip(ids_with_loss, losses.tolist()):
            if i in self.latest_loss or len(self.latest_loss) < MAX_TRACKED_IDS:
                self.latest_loss[int(i)] = v
        return out

    def _class_stats(self, losses: np.ndarray, targets: list[Any]) -> None:
        labels = np.asarray(targets, dtype=np.int64)
        if labels.size:
            self._n_classes = max(self._n_classes, int(labels.max()) + 1)
        if self._n_classes > MAX_CLASSES:
            self.class_loss.clear()
            self.class_counts.clear()
            return
        finite = np.isfinite(losses)
        for cls in np.unique(labels).tolist():
            mask = labels == cls
            self.class_counts[int(cls)] += int(mask.sum())
            good = mask & finite
            if good.any():
                history = self.class_loss.setdefault(int(cls), [])
                history.append(float(losses[good].mean()))
                del history[:-HISTORY]

    def _groups(
        self, ids: list[int], losses: np.ndarray, targets: list[Any], step: int
    ) -> dict[str, Any]:
        """Per id: streaks of unlearned / worse-than-chance observations; then window summaries."""
        chance = math.log(self._n_classes)
        last: dict[int, tuple[float, int]] = {}
        for i, v, t in zip(ids, losses.tolist(), targets):
            if not math.isfinite(v):
                continue
            key = int(i)
            if key not in self._streak_unlearned and len(self._streak_unlearned) >= MAX_TRACKED_IDS:
                continue
            u = self._streak_unlearned.get(key, 0)
            w = self._streak_wrong.get(key, 0)
            self._streak_unlearned[key] = u + 1 if v > UNLEARNED_LOSS else 0
            self._streak_wrong[key] = w + 1 if v > chance else 0
            last[key] = (v, int(t))
        if not last:
            return {}
        keys = list(last)
        vals = np.array([last[k][0] for k in keys])
        cls = np.array([last[k][1] for k in keys])
        unlearned = np.array([self._streak_unlearned[k] >= PERSIST_OBSERVATIONS for k in keys])
        wrong = np.array([self._streak_wrong[k] >= PERSIST_OBSERVATIONS for k in keys])
        total = float(vals.sum())
        out: dict[str, Any] = {
            "step": step,
            "n": len(keys),
            "n_classes": self._n_classes,
            "chance_loss": chance,
            "window_mean": float(vals.mean()),
        }
        for label, mask in (("unlearned", unlearned), ("wrong", wrong)):
            count = int(mask.sum())
            out[f"{label}_fraction"] = count / len(keys)
            out[f"{label}_share"] = float(vals[mask].sum() / total) if total > 0 else 0.0
            out[f"{label}_median"] = float(np.median(vals[mask])) if count else 0.0
            prev = np.array([self.latest_loss.get(k, np.nan) for k in np.asarray(keys)[mask]])
            known = np.isfinite(prev)
            before = float(prev[known].sum())
            # the group's loss now over its loss one pass earlier, minus 1 (0: flat)
            now = float(vals[mask][known].sum())
            out[f"{label}_change"] = now / before - 1.0 if before > 0 else 0.0
            rest = vals[~mask]
            out[f"{label}_rest_median"] = float(np.median(rest)) if rest.size else 0.0
            if count:
                top_class, top_count = Counter(cls[mask].tolist()).most_common(1)[0]
                out[f"{label}_purity"] = top_count / count
                out[f"{label}_class"] = int(top_class)
            else:
                out[f"{label}_purity"] = 0.0
                out[f"{label}_class"] = -1
        n_unlearned = int(unlearned.sum())
        both = int((wrong & unlearned).sum())
        out["wrong_of_unlearned"] = both / n_unlearned if n_unlearned else 0.0
        order = np.argsort(-vals[wrong]) if wrong.any() else np.zeros(0, dtype=np.int64)
        wrong_keys = [k for k, m in zip(keys, wrong.tolist()) if m]
        out["wrong_ids"] = [wrong_keys[j] for j in order[:REPORT_IDS].tolist()]
        return out

    def _count_epochs(self, ids: list[int]) -> None:
        if self.dataset_size is None:
            return
        for i in ids:
            key = int(i)
            if key not in self._epoch_ids:
                self._epoch_ids.add(key)
                if not self._reach_overflow and key not in self._ever_seen:
                    if len(self._ever_seen) >= MAX_TRACKED_IDS:
                        self._reach_overflow = True
                        self._ever_seen.clear()
                    else:
                        self._ever_seen.add(key)
                        self._epoch_new += 1
            self._epoch_samples += 1
            if self._epoch_samples >= self.dataset_size:
                self._close_epoch()

    def _close_epoch(self) -> None:
        assert self.dataset_size is not None
        size = len(self._epoch_ids)
        self.epoch_coverage.append(size / self.dataset_size)
        self.epoch_new_ids.append(self._epoch_new / self.dataset_size)
        overlap = len(self._epoch_ids & self._prev_epoch_ids) / size if size else 0.0
        self.epoch_overlap.append(overlap if self._prev_epoch_ids else 0.0)
        for series in (self.epoch_coverage, self.epoch_new_ids, self.epoch_overlap):
            del series[:-HISTORY]
        self._prev_epoch_ids = self._epoch_ids
        self._epoch_ids = set()
        self._epoch_samples = 0
        self._epoch_new = 0

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_seen": self.samples_seen,
            "loss_calls": self.loss_calls,
            "epoch_coverage": list(self.epoch_coverage),
            "epoch_new_ids": list(self.epoch_new_ids),
            "epoch_overlap": list(self.epoch_overlap),
            "epoch_samples": self._epoch_samples,
            "epoch_new": self._epoch_new,
            "epoch_ids": sorted(self._epoch_ids),
            "prev_epoch_ids": sorted(self._prev_epoch_ids),
            "ever_seen": sorted(self._ever_seen),
            "reach_overflow": self._reach_overflow,
            "n_classes": self._n_classes,
            "class_counts": [[int(c), int(n)] for c, n in sorted(self.class_counts.items())],
            "class_loss": [[int(c), list(v)] for c, v in sorted(self.class_loss.items())],
            "latest_loss": [[k, v] for k, v in sorted(self.latest_loss.items())],
            "streaks": [
                [k, self._streak_unlearned[k], self._streak_wrong.get(k, 0)]
                for k in sorted(self._streak_unlearned)
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_seen = int(state.get("samples_seen", 0))
        self.loss_calls = int(state.get("loss_calls", 0))
        self.epoch_coverage = [float(v) for v in state.get("epoch_coverage", [])]
        self.epoch_new_ids = [float(v) for v in state.get("epoch_new_ids", [])]
        self.epoch_overlap = [float(v) for v in state.get("epoch_overlap", [])]
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._epoch_new = int(state.get("epoch_new", 0))
        self._epoch_ids = {int(i) for i in state.get("epoch_ids", [])}
        self._prev_epoch_ids = {int(i) for i in state.get("prev_epoch_ids", [])}
        self._ever_seen = {int(i) for i in state.get("ever_seen", [])}
        self._reach_overflow = bool(state.get("reach_overflow", False))
        self._n_classes = int(state.get("n_classes", 0))
        self.class_counts = Counter({int(c): int(n) for c, n in state.get("class_counts", [])})
        self.class_loss = {int(c): [float(x) for x in v] for c, v in state.get("class_loss", [])}
        self.latest_loss = {int(k): float(v) for k, v in state.get("latest_loss", [])}
        self._streak_unlearned = {int(k): int(u) for k, u, _ in state.get("streaks", [])}
        self._streak_wrong = {int(k): int(w) for k, _, w in state.get("streaks", [])}
