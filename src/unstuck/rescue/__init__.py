"""Rescue: reversible actions, full-state snapshots, a policy, and verification with rollback."""

from unstuck.rescue.base import Action, Controls, all_actions, get_action
from unstuck.rescue.engine import RescueEngine
from unstuck.rescue.lr_multiplier import LRMultiplier
from unstuck.rescue.policy import ActionSequence, Ladder, Observe, Policy, Proposal, make_policy
from unstuck.rescue.snapshot import Snapshot, SnapshotStore, restore_snapshot, take_snapshot

__all__ = [
    "Action",
    "ActionSequence",
    "Controls",
    "LRMultiplier",
    "Ladder",
    "Observe",
    "Policy",
    "Proposal",
    "RescueEngine",
    "Snapshot",
    "SnapshotStore",
    "all_actions",
    "get_action",
    "make_policy",
    "restore_snapshot",
    "take_snapshot",
]
