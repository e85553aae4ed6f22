"""MemoryBank: FIFO order, wrap-around, detached reads, persistence, and two real processes (gloo)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sop_hf import MemoryBank
from sop_hf.modules.distributed import all_gather_with_grad, concat_all_gather


def constant_keys(value: float, count: int, dim: int = 2) -> torch.Tensor:
    return torch.full((count, dim), float(value))


def test_init__random_unit_rows_pointer_zero():
    bank = MemoryBank(100, 8)
    torch.testing.assert_close(bank.rows.norm(dim=1), torch.ones(100))
    assert int(bank.ptr) == 0 and bank.ptr.dtype == torch.long
    assert bank.rows.std() > 0.1  # not a constant


def test_enqueue__golden_wrap_around_k10_g4():
    bank = MemoryBank(10, 2)
    for value in (1, 2, 3, 4):
        bank.enqueue(constant_keys(value, 4))
    assert bank.rows[:, 0].tolist() == [3, 3, 4, 4, 4, 4, 2, 2, 3, 3]
    assert int(bank.ptr) == 6


def test_enqueue__more_keys_than_rows_keeps_newest():
    bank = MemoryBank(3, 1)
    bank.enqueue(torch.arange(1.0, 6.0)[:, None])
    assert bank.rows[:, 0].tolist() == [4, 5, 3] and int(bank.ptr) == 2
    bank.enqueue(torch.arange(6.0, 13.0)[:, None])  # 7 keys from ptr 2: last three are 10, 11, 12
    assert sorted(bank.rows[:, 0].tolist()) == [10, 11, 12] and int(bank.ptr) == (2 + 7) % 3


def test_enqueue__keeps_order_inside_a_batch():
    bank = MemoryBank(8, 1)
    bank.enqueue(torch.arange(5.0)[:, None])
    bank.enqueue(torch.arange(5.0, 10.0)[:, None])
    assert bank.rows[:, 0].tolist() == [8, 9, 2, 3, 4, 5, 6, 7] and int(bank.ptr) == 2


def test_read__is_a_detached_copy_unchanged_by_enqueue():
    bank = MemoryBank(6, 2)
    before = bank.read()
    keys = torch.ones(2, 2, requires_grad=True)
    bank.enqueue(keys * 2)
    assert not before.requires_grad and not bank.rows.requires_grad
    assert not torch.equal(before, bank.rows) and torch.equal(before[2:], bank.rows[2:])


def test_enqueue__shape_error():
    with pytest.raises(ValueError, match=r"keys of shape \[batch, 4\]"):
        MemoryBank(6, 4).enqueue(torch.ones(2, 3))
    with pytest.raises(ValueError, match="size must be >= 1"):
        MemoryBank(0, 4)


def test_state_dict__persistent_and_restored_exactly():
    bank = MemoryBank(10, 3)
    bank.enqueue(torch.randn(4, 3))
    state = bank.state_dict()
    assert set(state) == {"rows", "ptr"}
    other = MemoryBank(10, 3)
    other.load_state_dict(state)
    assert torch.equal(other.rows, bank.rows) and int(other.ptr) == 4


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(123)  # identical initial banks
        bank = MemoryBank(10, 3)
        for step in range(4):
            keys = torch.full((3, 3), 100.0 * step + 10 * rank) + torch.arange(3.0)[:, None]
            bank.enqueue(keys)
        gathered = concat_all_gather(torch.tensor([[float(rank)]]))
        # Differentiable gather: the backward returns this rank's slice of the summed gradient.
        x = torch.full((2, 1), float(rank + 1), requires_grad=True)
        all_x = all_gather_with_grad(x)
        (all_x.square().sum()).backward()
        torch.save(
            {"rows": bank.rows, "ptr": bank.ptr, "gathered": gathered, "grad": x.grad, "all_x": all_x.detach()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_processes__identical_banks_equal_to_one_process_run(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0["rows"], r1["rows"]) and int(r0["ptr"]) == int(r1["ptr"]) == (4 * 6) % 10
    torch.manual_seed(123)
    single = MemoryBank(10, 3)
    for step in range(4):
        keys = torch.cat([torch.full((3, 3), 100.0 * step + 10 * rank) + torch.arange(3.0)[:, None] for rank in (0, 1)])
        single.enqueue(keys)
    assert torch.equal(single.rows, r0["rows"]) and int(single.ptr) == int(r0["ptr"])
    assert r0["gathered"].flatten().tolist() == [0.0, 1.0]  # rank order
    # loss = sum over both ranks' copies of (all_x^2): d/dx on rank r = 2 * x_r * world_size
    assert r0["all_x"].flatten().tolist() == [1.0, 1.0, 2.0, 2.0]
    torch.testing.assert_close(r0["grad"], torch.full((2, 1), 2 * 1.0 * 2))
    torch.testing.assert_close(r1["grad"], torch.full((2, 1), 2 * 2.0 * 2))


def test_no_process_group__gathers_are_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert concat_all_gather(x) is x and all_gather_with_grad(x) is x
