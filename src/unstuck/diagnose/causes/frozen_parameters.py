"""Parameters that are never updated: left out of the optimizer, or frozen on a run that stalls."""

from __future__ import annotations

from typing import ClassVar

from unstuck.diagnose.base import FOUND_CONFIDENCE, Rule
from unstuck.diagnose.causes._data import ramp
from unstuck.diagnose.causes._hurt import loss_hurt
from unstuck.diagnose.evidence import Evidence
from unstuck.signals.host import PERSIST_OBSERVATIONS
from unstuck.types import Finding, Remedy

# A freeze with requires_grad=False is how fine-tuning keeps a pretrained backbone. Frozen
# weights still at a uniform random draw (integrations/_facts.py, at_uniform_init) were never
# trained: a bug at step 0. Other frozen weights may be pretrained, so they are named only on a
# hurt run (causes/_hurt.py). Ours: the confidence rises from FOUND_CONFIDENCE with the frozen
# share of the model's elements, from a hundredth to a tenth (untrained: one small layer is
# already a bug) or from a tenth to a half (frozen on a hurt run: most of the model).
UNTRAINED_SHARE = (0.01, 0.1)
FROZEN_SHARE = (0.1, 0.5)
# A tensor the optimizer holds whose .grad stayed None on every sampled step: not in the graph
# (a .detach() on the path, a layer the forward never calls). Judged after PERSIST_OBSERVATIONS
# samples, the "persistently" of the data rules (3; at the default cadence of 8 steps: step 16,
# inside the shortest programs of issue 24). Not 1.0: a layer used only now and then (a branch
# taken on some batches) also misses gradients for a while.
NO_GRAD_CONFIDENCE = 0.9


class FrozenParameters(Rule):
    """Trainable parameters sit in no optimizer group or outside the graph, or are frozen at
    their random draw (or, possibly pretrained, frozen on a hurt run)."""

    code: ClassVar[str] = "frozen_parameters"
    requires: ClassVar[frozenset[str]] = frozenset({"params_not_in_optimizer"})
    uses: ClassVar[frozenset[str]] = frozenset(
        {
            "params_frozen",
            "params_frozen_share",
            "params_frozen_untrained",
            "params_frozen_untrained_share",
            "params_without_grad",
            "param_names",
        }
    )
    continuous: ClassVar[bool] = True
    explanation: ClassVar[str] = (
        "Some parameters have requires_grad=True but are in no optimizer param group, so their "
        "gradients are computed and thrown away: those layers keep their initial values. This "
        "usually means the optimizer was built before a layer was added or replaced, or from a "
        "subset such as model.head.parameters(). Build the optimizer from model.parameters() "
        "after the model is final, or set requires_grad=False on layers you mean to freeze. "
        "Tensors in the optimizer that never get a gradient are cut off from the loss (a "
        ".detach() on the path, a layer the forward never calls). Layers frozen with "
        "requires_grad=False while still at their random initialisation are named at once: a "
        "freeze copied from a fine-tuning recipe onto a model trained from scratch leaves "
        "random layers fixed; other frozen layers, possibly pretrained, only when the run is "
        "stalled or hurt. Unfreeze them unless their weights are pretrained."
    )

    def check(self, ev: Evidence) -> Finding | None:
        names = list(ev.get("params_not_in_optimizer", []))
        if not names:
            return self._without_gradient(ev) or self._frozen(ev)
        return Finding(
            cause=self.code,
            confidence=1.0,
            evidence={"parameters": names, "count": len(names)},
            step=ev.step,
            summary=f"{len(names)} trainable parameter tensors are in no optimizer group: "
            f"{_listed(names)}",
            remedies=(Remedy("add_to_optimizer", note="rebuild the optimizer from them"),),
        )

    def _without_gradient(self, ev: Evidence) -> Finding | None:
        """Tensors in the optimizer that never had a gradient on a sampled step."""
        seen = ev.get("params_without_grad")
        if not isinstance(seen, dict):
            return None
        sampled = seen.get("sampled_steps")
        indices = seen.get("indices")
        if not isinstance(sampled, int) or sampled < PERSIST_OBSERVATIONS:
            return None
        if not isinstance(indices, list) or not indices:
            return None
        all_names = list(ev.get("param_names", []) or [])
        names = [
            all_names[i] if isinstance(i, int) and 0 <= i < len(all_names) else f"tensor {i}"
            for i in indices
        ]
        if all_names and len(names) == len(all_names):
            return None  # no gradient anywhere: the loop reads them another way (or none ran)
        return Finding(
            cause=self.code,
            confidence=NO_GRAD_CONFIDENCE,
            evidence={
                "reading": "no_gradient",
                "parameters": names,
                "count": len(names),
                "sampled_steps": sampled,
            },
            step=ev.step,
            summary=f"{len(names)} parameter tensors in the optimizer got no gradient on any of "
            f"{sampled} sampled steps (not in the graph: a .detach() on the path, or a layer "
            f"the forward never calls): {_listed(names)}",
            remedies=(
                Remedy(
                    "check_graph",
                    automatic=False,
                    note="find where the path to these layers is cut (.detach(), .item(), "
                    "torch.no_grad, a numpy round trip) or why the forward skips them",
                ),
            ),
        )

    def _frozen(self, ev: Evidence) -> Finding | None:
        """Tensors frozen with ``requires_grad=False``: at their random draw, or on a hurt run."""
        untrained = list(ev.get("params_frozen_untrained", []) or [])
        share = ev.get("params_frozen_untrained_share")
        if untrained and isinstance(share, (int, float)) and share > 0:
            strength = 0.3 * ramp(float(share), *UNTRAINED_SHARE)
            return self._finding(ev, "untrained", untrained, float(share), strength, None)
        frozen = list(ev.get("params_frozen", []) or [])
        share = ev.get("params_frozen_share")
        if not frozen or not isinstance(share, (int, float)) or share <= 0:
            return None
        how = loss_hurt(ev)
        if how is None:
            return None
        strength = 0.2 * ramp(float(share), *FROZEN_SHARE)
        return self._finding(ev, "requires_grad", frozen, float(share), strength, how)

    def _finding(
        self,
        ev: Evidence,
        reading: str,
        names: list[str],
        share: float,
        strength: float,
        hurt: str | None,
    ) -> Finding:
        if hurt is None:
            summary = (
                f"{len(names)} parameter tensors are frozen (requires_grad=False) at their "
                f"random initialisation ({share:.0%} of the model's weights): {_listed(names)}"
            )
        else:
            summary = (
                f"the loss is {hurt} with {len(names)} parameter tensors frozen "
                f"(requires_grad=False, {share:.0%} of the model's weights): {_listed(names)}"
            )
        evidence: dict[str, object] = {
            "reading": reading,
            "parameters": names,
            "count": len(names),
            "frozen_share": share,
        }
        if hurt is not None:
            evidence["loss"] = hurt
        return Finding(
            cause=self.code,
            confidence=round(FOUND_CONFIDENCE + strength, 4),
            evidence=evidence,
            step=ev.step,
            summary=summary,
            remedies=(
                Remedy(
                    "unfreeze_parameters",
                    automatic=False,
                    note="unfreeze them (requires_grad_(True), and add them to the optimizer) "
                    "unless they hold pretrained weights you mean to keep",
                ),
            ),
        )


def _listed(names: list[str]) -> str:
    """The first five names, and how many more."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more
