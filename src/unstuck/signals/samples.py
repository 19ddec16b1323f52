"""Samples seen, and per-sample losses with their ids and targets when the user gives them.

With ``ids`` and ``dataset_size`` this counts the distinct ids seen in each nominal epoch
(``dataset_size`` samples): an epoch that sees part of the data (truncated) or the same subset
every time (repeated) shows here. With per-sample losses it keeps summaries (how concentrated the
loss is, per-class means) and each id's latest loss, for the label-noise and imbalance rules.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from unstuck.signals.base import CostTier, Packet, Tap

__all__ = ["SamplesTap"]

MAX_TRACKED_IDS = 1 << 20  # bound on the per-id table kept on the host
TOP_FRACTION = 0.05  # "top 5 % of samples": the share of loss they hold is the label-noise signal


class SamplesTap(Tap):
    """Counts samples and, given ids, summarises who is seen and who stays wrong."""

    name: ClassVar[str] = "samples"
    tier: ClassVar[CostTier] = "always"
    reduction = "sum"

    def __init__(self, dataset_size: int | None = None) -> None:
        if dataset_size is not None and dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        self.dataset_size = dataset_size
        self.samples_seen = 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        self._epoch_ids: set[int] = set()
        self._epoch_samples = 0
        self.epoch_coverage: list[float] = []  # distinct ids / dataset_size, per nominal epoch
        self.latest_loss: dict[int, float] = {}
        self.class_loss: dict[int, list[float]] = {}

    def on_loss(
        self, step: int, loss: torch.Tensor, ids: torch.Tensor | None, targets: torch.Tensor | None
    ) -> None:
        n = loss.numel() if loss.ndim else (ids.numel() if ids is not None else 0)
        self.samples_seen += n
        if ids is not None or loss.ndim:
            self._pending.append((step, loss, ids, targets))

    def collect(self) -> Packet:
        if not self._pending:
            return Packet(host={"samples_seen": self.samples_seen})
        per_sample = [p for p in self._pending if p[1].ndim]
        packet = Packet(host={"samples_seen": self.samples_seen})
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

    def finish(self, host: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        step = host.get("last_step")
        if step is not None:
            out["samples_seen"] = ([step], [float(host["samples_seen"])])
        if "ids" in host:
            self._count_epochs(host["ids"])
            if self.epoch_coverage:
                out["epoch_coverage"] = list(self.epoch_coverage)
        if "per_sample_loss" in host:
            losses = np.asarray(host["per_sample_loss"], dtype=np.float64)
            finite = losses[np.isfinite(losses)]
            if finite.size and step is not None:
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
            if len(ids_with_loss) == losses.size:
                for i, v in zip(ids_with_loss, losses.tolist()):
                    if i in self.latest_loss or len(self.latest_loss) < MAX_TRACKED_IDS:
                        self.latest_loss[int(i)] = v
            targets = host.get("targets")
            if targets is not None and len(targets) == losses.size:
                for cls in set(targets):
                    mask = np.asarray(targets) == cls
                    self.class_loss.setdefault(int(cls), []).append(float(losses[mask].mean()))
                out["class_loss"] = {c: v[-1] for c, v in self.class_loss.items()}
        return out

    def _count_epochs(self, ids: list[int]) -> None:
        if self.dataset_size is None:
            return
        for i in ids:
            self._epoch_ids.add(int(i))
            self._epoch_samples += 1
            if self._epoch_samples >= self.dataset_size:
                self.epoch_coverage.append(len(self._epoch_ids) / self.dataset_size)
                self._epoch_ids.clear()
                self._epoch_samples = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_seen": self.samples_seen,
            "epoch_coverage": list(self.epoch_coverage),
            "epoch_samples": self._epoch_samples,
            "epoch_ids": sorted(self._epoch_ids),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples_seen = int(state.get("samples_seen", 0))
        self.epoch_coverage = [float(v) for v in state.get("epoch_coverage", [])]
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._epoch_ids = {int(i) for i in state.get("epoch_ids", [])}
