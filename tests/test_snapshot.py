"""Restoring a snapshot: exact, in place when the live state fits, reusable, and never aliased."""

from __future__ import annotations

import torch

from unstuck.rescue.snapshot import restore_snapshot, take_snapshot


def _setup(optimizer_cls=torch.optim.Adam, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.ReLU(), torch.nn.Linear(7, 2)
    )
    optimizer = optimizer_cls(model.parameters(), lr=1e-2, **kw)
    return model, optimizer


def _train(model, optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(16, 5)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _state(model, optimizer) -> list[torch.Tensor]:
    tensors = [t.detach().clone() for t in model.state_dict().values()]
    for p in model.parameters():
        tensors += [v.clone() for v in optimizer.state[p].values() if torch.is_tensor(v)]
    return tensors


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_snapshot_restores_exactly_in_place_and_can_be_restored_again() -> None:
    model, optimizer = _setup()
    _train(model, optimizer, 3)
    before = _state(model, optimizer)
    lr_before = optimizer.param_groups[0]["lr"]
    snap = take_snapshot(0, model, optimizer)
    moments = {id(optimizer.state[p]["exp_avg"]) for p in model.parameters()}
    for _ in range(2):  # a rollback, then a second restore of the same snapshot (branch trials)
        _train(model, optimizer, 3)
        optimizer.param_groups[0]["lr"] = 5.0
        assert not _equal(_state(model, optimizer), before)
        restore_snapshot(snap, model, optimizer)
        assert _equal(_state(model, optimizer), before)
        assert optimizer.param_groups[0]["lr"] == lr_before
    # The live moment tensors were written into, not replaced by the snapshot's own tensors
    # (which would alias the snapshot with live state and double the memory of a restore).
    assert {id(optimizer.state[p]["exp_avg"]) for p in model.parameters()} == moments
    assert all(
        optimizer.state[p]["exp_avg"].data_ptr() != t.data_ptr()
        for p in model.parameters()
        for t in [
            snap.optimizer["state"][i]["exp_avg"] for i in range(len(snap.optimizer["state"]))
        ]
    )


def test_a_state_that_no_longer_fits_is_loaded_whole() -> None:
    model, optimizer = _setup()
    _train(model, optimizer, 2)
    before = _state(model, optimizer)
    snap = take_snapshot(0, model, optimizer)
    optimizer.state.clear()  # e.g. the user reset the optimizer: no live twin to copy into
    _train(model, optimizer, 1)
    del optimizer.state[next(iter(model.parameters()))]["exp_avg_sq"]
    restore_snapshot(snap, model, optimizer)
    assert _equal(_state(model, optimizer), before)
    _train(model, optimizer, 1)  # the loaded state is the optimizer's own: training goes on
    restore_snapshot(snap, model, optimizer)
    assert _equal(_state(model, optimizer), before)


def test_group_keys_added_after_the_snapshot_are_dropped_as_load_state_dict_does() -> None:
    model, optimizer = _setup(torch.optim.SGD, momentum=0.9)
    _train(model, optimizer, 2)
    snap = take_snapshot(0, model, optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)  # adds initial_lr
    assert "initial_lr" in optimizer.param_groups[0]
    _train(model, optimizer, 1)
    scheduler.step()
    restore_snapshot(snap, model, optimizer)
    assert set(optimizer.param_groups[0]) == set(snap.optimizer["param_groups"][0])


def test_a_tensor_learning_rate_stays_the_users_tensor() -> None:
    model, optimizer = _setup(torch.optim.Adam, capturable=False)
    lr = torch.tensor(1e-2)
    optimizer.param_groups[0]["lr"] = lr
    _train(model, optimizer, 2)
    snap = take_snapshot(0, model, optimizer)
    lr.fill_(3.0)
    restore_snapshot(snap, model, optimizer)
    assert optimizer.param_groups[0]["lr"] is lr and torch.equal(lr, torch.tensor(1e-2))
