"""``unstuck.explain``: the longer story behind a finding, with what to do."""

from __future__ import annotations

import textwrap

from unstuck.diagnose.base import get_rule
from unstuck.types import Finding

__all__ = ["explain"]


def explain(finding: Finding | str) -> str:
    """Explain a finding (or a cause code) in a few sentences, with its evidence.

    >>> print(explain("lr_too_low").splitlines()[0])
    lr_too_low: Steps too small: the LR is far below what the model tolerates.
    """
    code = finding.cause if isinstance(finding, Finding) else str(finding)
    rule = get_rule(code)
    module_doc = (__import__(type(rule).__module__, fromlist=["_"]).__doc__ or "").strip()
    lines = [f"{code}: {module_doc}", "", textwrap.fill(rule.explanation, width=88)]
    if isinstance(finding, Finding):
        lines += ["", f"At step {finding.step} ({finding.confidence:.2f}): {finding.summary}."]
        lines += [f"  {k} = {v}" for k, v in finding.evidence.items()]
        for remedy in finding.remedies:
            kind = "automatic" if remedy.automatic else "suggested"
            params = ", ".join(f"{k}={v}" for k, v in remedy.params.items())
            note = f" — {remedy.note}" if remedy.note else ""
            lines.append(f"  {kind}: {remedy.action}({params}){note}")
    return "\n".join(lines)
