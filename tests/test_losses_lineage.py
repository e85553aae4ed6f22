"""Tests of losses_lineage.py: random partitions, MaSSL, CARP, CARL and the weight-normalised prototype layer.

Golden values are docs/method.md §18, cases 12 (CARP/CARL) and 13 (MaSSL); KoLeo's are in test_losses.py.
"""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sop_hf.losses import (
    CARPLossOutput,
    carl_loss,
    carp_consistency_loss,
    carp_loss,
    carp_uniformity_loss,
    koleo_loss,
    massl_loss,
    random_partition,
    view_pairs,
)
from sop_hf.losses.carp import CARP_EPS
from sop_hf.modules.prototypes import WeightNormalizedPrototypes

F64 = torch.float64
EPS32 = torch.finfo(torch.float32).eps


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(rows: int, dim: int, seed: int, dtype=F64) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(rows, dim, generator=_gen(seed), dtype=dtype), dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# random_partition
# ----------------------------------------------------------------------------------------------------------------------


def test_random_partition__shape_disjoint_blocks_and_leftovers():
    partition = random_partition(70, 16, generator=_gen(0))
    assert partition.shape == (4, 16) and partition.dtype == torch.long
    flat = partition.flatten()
    assert flat.unique().numel() == 64 and int(flat.min()) >= 0 and int(flat.max()) < 70  # disjoint, in range
    assert len(set(range(70)) - set(flat.tolist())) == 6  # the K mod N_B leftovers are unused


def test_random_partition__seeded_reproducible_and_varies_with_seed():
    assert torch.equal(random_partition(128, 8, generator=_gen(3)), random_partition(128, 8, generator=_gen(3)))
    assert not torch.equal(random_partition(128, 8, generator=_gen(3)), random_partition(128, 8, generator=_gen(4)))


def test_random_partition__single_block_is_a_permutation():
    partition = random_partition(10, 10, generator=_gen(0))
    assert partition.shape == (1, 10) and sorted(partition.flatten().tolist()) == list(range(10))


def test_random_partition__broadcast_is_noop_without_process_group():
    shared = random_partition(32, 4, generator=_gen(1), broadcast=True)
    assert torch.equal(shared, random_partition(32, 4, generator=_gen(1)))


@pytest.mark.parametrize("block_size", [0, 11])
def test_random_partition__block_size_out_of_range_raises(block_size):
    with pytest.raises(ValueError, match=r"block_size must be in \[1, 10\]"):
        random_partition(10, block_size)


def test_random_partition__num_columns_raises():
    with pytest.raises(ValueError, match="num_columns must be >= 1, got 0"):
        random_partition(0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# MaSSL
# ----------------------------------------------------------------------------------------------------------------------


def _massl_reference(z_s, z_t, memory, partition, tau_s, tau_t, batch):
    """Per pair H(q) + KL(q || p), computed directly from the full logits."""
    s_views = (z_s @ memory.T / tau_s)[:, partition].split(batch)  # [B, N_P, N_B] each
    t_views = (z_t @ memory.T / tau_t)[:, partition].split(batch)
    pairs = view_pairs(len(s_views), len(t_views))
    terms = []
    for i, j in pairs:
        log_p, log_q = s_views[i].log_softmax(-1), t_views[j].log_softmax(-1)
        q = log_q.exp()
        entropy = -(q * log_q).sum(-1)
        kl = (q * (log_q - log_p)).sum(-1)
        terms.append((entropy + kl).mean())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("block_size, expected", [(16384, 9.704061), (1024, 6.931472)])
def test_massl__equal_memory_rows_give_ln_block_size_and_zero_gradient(block_size, expected):
    memory = _unit(1, 4, 0).expand(2 * block_size, 4).contiguous()  # K = 2 N_B equal rows
    z_s = _unit(6, 4, 1).requires_grad_()  # V = 3, B = 2
    z_t = _unit(4, 4, 2)
    partition = random_partition(2 * block_size, block_size, generator=_gen(0))
    loss = massl_loss(z_s, z_t, memory, partition, 0.1, 0.04)
    loss.backward()
    assert abs(loss.item() - math.log(block_size)) < 1e-9 and abs(loss.item() - expected) < 1e-6
    assert z_s.grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("num_views", [2, 3, 5])
def test_massl__equals_entropy_plus_kl_over_view_pairs(num_views):
    batch, memory = 3, _unit(50, 8, 0)
    z_s, z_t = _unit(num_views * batch, 8, 1), _unit(2 * batch, 8, 2)
    partition = random_partition(50, 12, generator=_gen(5))  # 4 blocks, 2 leftovers
    loss = massl_loss(z_s, z_t, memory, partition, 0.1, 0.04)
    torch.testing.assert_close(loss, _massl_reference(z_s, z_t, memory, partition, 0.1, 0.04, batch))
    assert len(view_pairs(num_views, 2)) == 2 * num_views - 2


def test_massl__gradient_wrt_scaled_student_logits():
    batch, dim, num_blocks, block_size, tau_s, tau_t = 2, 6, 3, 5, 0.1, 0.04
    memory, z_t = _unit(17, dim, 0), _unit(2 * batch, dim, 2)
    z_s = _unit(3 * batch, dim, 1).requires_grad_()  # 2 global + 1 local view: |Pi| = 4
    partition = random_partition(17, block_size, generator=_gen(1))
    massl_loss(z_s, z_t, memory, partition, tau_s, tau_t).backward()
    blocks = memory[partition]  # [N_P, N_B, d]
    p = torch.einsum("bd,knd->bkn", z_s.detach(), blocks).div(tau_s).softmax(-1).split(batch)
    q = torch.einsum("bd,knd->bkn", z_t, blocks).div(tau_t).softmax(-1).split(batch)
    scale = 4 * num_blocks * batch  # |Pi| N_P B
    grad_logits = [(p[0] - q[1]) / scale, (p[1] - q[0]) / scale, ((p[2] - q[0]) + (p[2] - q[1])) / scale]
    expected = torch.cat([torch.einsum("bkn,knd->bd", g, blocks) / tau_s for g in grad_logits])  # chain rule
    torch.testing.assert_close(z_s.grad, expected)


def test_massl__koleo_weight_adds_mean_koleo_of_global_views():
    batch, memory = 4, _unit(40, 8, 0)
    z_s, z_t = _unit(3 * batch, 8, 1), _unit(2 * batch, 8, 2)
    partition = random_partition(40, 10, generator=_gen(0))
    plain = massl_loss(z_s, z_t, memory, partition, 0.1, 0.04)
    with_koleo = massl_loss(z_s, z_t, memory, partition, 0.1, 0.04, koleo_weight=0.5)
    koleo = (koleo_loss(z_s[:batch]) + koleo_loss(z_s[batch : 2 * batch])) / 2
    torch.testing.assert_close(with_koleo - plain, 0.5 * koleo)


def test_massl__gradient_isolation_teacher_and_memory():
    memory = _unit(32, 8, 0, torch.float32).requires_grad_()
    z_s = _unit(4, 8, 1, torch.float32).requires_grad_()
    z_t = _unit(4, 8, 2, torch.float32).requires_grad_()
    massl_loss(z_s, z_t, memory, random_partition(32, 8), 0.1, 0.04).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None and memory.grad is None


def test_massl__bf16_autocast_gives_float32_finite_loss():
    linear = nn.Linear(8, 8)
    memory = _unit(64, 8, 0, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_s, z_t = linear(torch.randn(6, 8)), linear(torch.randn(4, 8))
        assert z_s.dtype == torch.bfloat16
        loss = massl_loss(z_s, z_t, memory, random_partition(64, 16), 0.1, 1e-4)  # near one-hot teacher
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in linear.parameters())


def test_massl__bad_arguments_raise():
    memory, z = _unit(16, 4, 0), _unit(4, 4, 1)
    partition = random_partition(16, 4)
    with pytest.raises(ValueError, match="student_temp must be > 0, got 0"):
        massl_loss(z, z, memory, partition, 0, 0.04)
    with pytest.raises(ValueError, match="teacher_temp must be > 0"):
        massl_loss(z, z, memory, partition, 0.1, -1.0)
    with pytest.raises(ValueError, match=r"teacher rows \(3\) must be 2 views"):
        massl_loss(z, z[:3], memory, partition, 0.1, 0.04)
    with pytest.raises(ValueError, match="partition must hold at most K = 16 columns"):
        massl_loss(z, z, memory, random_partition(32, 4), 0.1, 0.04)
    with pytest.raises(ValueError, match="embedding widths must equal the memory width 4"):
        massl_loss(_unit(4, 5, 0), z, memory, partition, 0.1, 0.04)


# ----------------------------------------------------------------------------------------------------------------------
# CARP
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size, expected", [(512, 6.238325), (65536, 11.090355)])
def test_carp__equal_logits_give_ln_block_size_and_zero_uniformity(block_size, expected):
    num_columns = 2 * block_size if block_size == 512 else block_size
    partition = random_partition(num_columns, block_size, generator=_gen(0))
    student, teacher = torch.zeros(4, num_columns, dtype=F64), torch.zeros(4, num_columns, dtype=F64)
    out = carp_loss(student, teacher, partition)
    assert abs(out.consistency.item() - expected) < 1e-6 and abs(out.consistency.item() - math.log(block_size)) < 1e-9
    assert abs(out.uniformity.item()) < 1e-9


def test_carp__uniform_teacher_gives_ln_block_size_and_zero_student_gradient():
    partition = random_partition(64, 16, generator=_gen(0))
    student = torch.randn(6, 64, generator=_gen(1), dtype=F64).mul(3).requires_grad_()
    teacher = torch.full((4, 64), 2.5, dtype=F64)
    loss = carp_consistency_loss(student, teacher, partition)
    loss.backward()
    assert abs(loss.item() - math.log(16)) < 1e-12
    assert student.grad.abs().max().item() < 1e-12


def test_carp__p_equal_q_gives_minus_log_sum_of_squares():
    partition = random_partition(40, 8, generator=_gen(0))
    logits = torch.randn(4, 40, generator=_gen(1), dtype=F64)  # V = G = 2, B = 2
    probs = logits[:, partition].softmax(-1)  # [4, N_P, N_B]
    inner = (probs * probs.roll(2, dims=0)).sum(-1)  # each view against the other: pairs (0, 1) and (1, 0)
    loss = carp_consistency_loss(logits, logits, partition)
    torch.testing.assert_close(loss, -inner.log().mean())
    same = torch.randn(2, 40, generator=_gen(2), dtype=F64).repeat(2, 1)  # both views identical: p = q per pair
    torch.testing.assert_close(
        carp_consistency_loss(same, same, partition), -same[:, partition].softmax(-1).square().sum(-1).log().mean()
    )


def test_carp__one_hot_clips_both_ends():
    one_hot = torch.zeros(4, 16, dtype=F64)
    one_hot[:, 3] = 1000.0
    agree = carp_consistency_loss(one_hot, one_hot, None)
    assert abs(agree.item() - (-math.log1p(-EPS32))) < 1e-15 and abs(agree.item() - 1.1920929e-7) < 1e-13
    other = torch.zeros(4, 16, dtype=F64)
    other[:, 7] = 1000.0
    disagree = carp_consistency_loss(one_hot, other, None)
    assert abs(disagree.item() - (-math.log(EPS32))) < 1e-12 and abs(disagree.item() - 15.942385) < 1e-6


def test_carp__straight_through_clip_keeps_gradient_where_reference_kills_it():
    student = torch.zeros(4, 16, dtype=F64)
    student[:, 3] = 30.0
    teacher = torch.zeros(4, 16, dtype=F64)
    teacher[:, 7] = 30.0  # <p, q> ~ 2 e^-30 < eps
    grads = {}
    for straight_through in (True, False):
        leaf = student.clone().requires_grad_()
        loss = carp_consistency_loss(leaf, teacher, None, straight_through_clip=straight_through)
        loss.backward()
        grads[straight_through] = leaf.grad
        assert abs(loss.item() - (-math.log(EPS32))) < 1e-12  # same value either way
    assert grads[False].abs().max().item() == 0.0  # the reference's dead clip
    assert grads[True][:, 7].lt(0).all() and grads[True][:, 3].gt(0).all()  # pulls towards the teacher's prototype
    assert torch.isfinite(grads[True]).all()


def test_carp__gradient_in_range_is_unchanged_by_the_clip_convention():
    partition = random_partition(48, 12, generator=_gen(0))
    student = torch.randn(6, 48, generator=_gen(1), dtype=F64)
    teacher = torch.randn(4, 48, generator=_gen(2), dtype=F64)
    grads = []
    for straight_through in (True, False):
        leaf = student.clone().requires_grad_()
        carp_consistency_loss(leaf, teacher, partition, straight_through_clip=straight_through).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_carp__all_rows_on_one_prototype_give_ln_block_size_minus_eps():
    assert CARP_EPS == EPS32
    student = torch.zeros(6, 512, dtype=F64)
    student[:, 9] = 1000.0
    teacher = student[:4].clone()
    uniformity = carp_uniformity_loss(student, teacher, None)
    assert abs(uniformity.item() - (math.log(512) + math.log1p(-EPS32))) < 1e-12
    assert abs(uniformity.item() - (6.238325 - 1.19e-7)) < 1e-6
    # One prototype per block: every block's mean is a one-hot.
    partition = random_partition(1024, 512, generator=_gen(0))
    per_block = torch.zeros(6, 1024, dtype=F64)
    per_block[:, partition[:, 0]] = 1000.0
    torch.testing.assert_close(
        carp_uniformity_loss(per_block, per_block[:4], partition),
        torch.tensor(math.log(512) + math.log1p(-EPS32), dtype=F64),
    )


def test_carp__uniformity_equals_kl_of_mean_to_uniform():
    partition = random_partition(30, 10, generator=_gen(0))
    student = torch.randn(6, 30, generator=_gen(1), dtype=F64)
    teacher = torch.randn(4, 30, generator=_gen(2), dtype=F64)
    p_bar = torch.cat((student, teacher))[:, partition].softmax(-1).mean(0)  # [N_P, N_B]
    expected = (p_bar * (p_bar * 10).log()).sum(-1).mean()
    torch.testing.assert_close(carp_uniformity_loss(student, teacher, partition), expected)


def test_carp_loss__sums_terms_and_matches_the_separate_functions():
    partition = random_partition(64, 16, generator=_gen(0))
    student = torch.randn(8, 64, generator=_gen(1), dtype=F64)
    teacher = torch.randn(4, 64, generator=_gen(2), dtype=F64)
    out = carp_loss(student, teacher, partition)
    assert isinstance(out, CARPLossOutput)
    torch.testing.assert_close(out.consistency, carp_consistency_loss(student, teacher, partition))
    torch.testing.assert_close(out.uniformity, carp_uniformity_loss(student, teacher, partition))
    torch.testing.assert_close(out.loss, out.consistency + out.uniformity)


def test_carp__gradient_isolation_and_bf16_autocast():
    prototypes = WeightNormalizedPrototypes(8, 64)
    teacher_layer = WeightNormalizedPrototypes(8, 64)
    partition = random_partition(64, 16, broadcast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = prototypes(torch.randn(6, 8) * 20)  # large ||z||: sharp, underflowing softmax
        teacher = teacher_layer(torch.randn(4, 8) * 20)
        assert student.dtype == torch.bfloat16
        out = carp_loss(student, teacher, partition)
    out.loss.backward()
    for term in (out.loss, out.consistency, out.uniformity):
        assert term.dtype == torch.float32 and torch.isfinite(term)
    assert torch.isfinite(prototypes.weight.grad).all() and prototypes.weight.grad.abs().sum() > 0
    assert teacher_layer.weight.grad is None


def test_carp__bad_arguments_raise():
    student, teacher = torch.randn(4, 16), torch.randn(4, 16)
    with pytest.raises(ValueError, match="same K"):
        carp_loss(student, torch.randn(4, 15), None)
    with pytest.raises(ValueError, match="partition must be a non-empty"):
        carp_loss(student, teacher, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_global_views must be >= 1, got 0"):
        carp_consistency_loss(student, teacher, None, num_global_views=0)
    with pytest.raises(ValueError, match="uniformity_weight must be >= 0"):
        carp_loss(student, teacher, None, uniformity_weight=-1.0)


# ----------------------------------------------------------------------------------------------------------------------
# CARL
# ----------------------------------------------------------------------------------------------------------------------


def test_carl__equal_logits_give_ln_k_and_zero_kl():
    out = carl_loss(torch.zeros(6, 300, dtype=F64), torch.zeros(4, 300, dtype=F64), uniformity_weight=5.0)
    assert abs(out.consistency.item() - math.log(300)) < 1e-12 and abs(out.uniformity.item()) < 1e-12
    assert abs(out.loss.item() - math.log(300)) < 1e-12


def test_carl__weight_scales_only_the_kl_and_equals_one_block_carp():
    student = torch.randn(6, 40, generator=_gen(1), dtype=F64)
    teacher = torch.randn(4, 40, generator=_gen(2), dtype=F64)
    low, high = carl_loss(student, teacher, 0.5), carl_loss(student, teacher, 3.0)
    torch.testing.assert_close(low.consistency, high.consistency)
    torch.testing.assert_close(low.uniformity, high.uniformity)
    torch.testing.assert_close(high.loss - high.consistency, 3.0 * high.uniformity)
    one_block = carp_loss(student, teacher, torch.arange(40)[None])  # same as a single explicit block
    torch.testing.assert_close(low.consistency, one_block.consistency)
    torch.testing.assert_close(low.uniformity, one_block.uniformity)


# ----------------------------------------------------------------------------------------------------------------------
# WeightNormalizedPrototypes
# ----------------------------------------------------------------------------------------------------------------------


def test_weight_normalized_prototypes__unit_rows_and_matches_torch_weight_norm_with_unit_gain():
    layer = WeightNormalizedPrototypes(6, 10).double()
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(6, 10, bias=False).double(), dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.fill_(1.0)  # g = 1
        reference.parametrizations.weight.original1.copy_(layer.weight)  # v
    reference.parametrizations.weight.original0.requires_grad_(False)
    x = torch.randn(5, 6, dtype=F64) * 4  # not normalised: ||z|| is the inverse temperature
    torch.testing.assert_close(layer.normalized_weight().norm(dim=1), torch.ones(10, dtype=F64))
    out, ref = layer(x), reference(x)
    torch.testing.assert_close(out, ref)
    (out.square().sum()).backward()
    (ref.square().sum()).backward()
    torch.testing.assert_close(layer.weight.grad, reference.parametrizations.weight.original1.grad)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]


def test_weight_normalized_prototypes__bad_sizes_raise():
    with pytest.raises(ValueError, match="num_prototypes must be >= 1, got 0"):
        WeightNormalizedPrototypes(4, 0)


# ----------------------------------------------------------------------------------------------------------------------
# Two processes: CARP's shared partition and L_e pooled over ranks
# ----------------------------------------------------------------------------------------------------------------------

_B, _D, _K, _NB, _V = 3, 5, 24, 8, 3


def _carp_data():
    """Two ranks' inputs (float64): student [V*B, D] view-major per rank, teacher logits [2B, K] per rank."""
    gen = _gen(11)
    x = [torch.randn(_V * _B, _D, generator=gen, dtype=F64) for _ in range(2)]
    teacher = [torch.randn(2 * _B, _K, generator=gen, dtype=F64) * 2 for _ in range(2)]
    weight = torch.randn(_K, _D, generator=gen, dtype=F64)
    return x, teacher, weight


def _carp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        partition = random_partition(_K, _NB, generator=_gen(100 + rank), broadcast=True)
        x, teacher, weight = _carp_data()
        results = {"partition": partition}
        for name in ("uniformity", "total"):
            theta = weight.clone().requires_grad_()
            student = x[rank] @ theta.T  # [V*B, K]
            if name == "uniformity":
                loss = carp_uniformity_loss(student, teacher[rank], partition)
            else:
                loss = carp_loss(student, teacher[rank], partition).loss
            loss.backward()
            results[name] = (loss.detach(), theta.grad)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _interleave_views(parts, batch):
    """Concatenate two ranks' view-major tensors view by view: view i = rank 0's rows then rank 1's."""
    return torch.cat([torch.cat(views) for views in zip(*(p.split(batch) for p in parts), strict=True)])


def test_carp__two_processes_match_one_process_on_pooled_rows(tmp_path):
    mp.spawn(_carp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # The partition is rank 0's draw on both ranks.
    expected_partition = random_partition(_K, _NB, generator=_gen(100))
    assert torch.equal(r0["partition"], expected_partition) and torch.equal(r1["partition"], expected_partition)

    x, teacher, weight = _carp_data()
    x_all, teacher_all = _interleave_views(x, _B), _interleave_views(teacher, _B)  # 1 rank x 2B rows per view
    for name in ("uniformity", "total"):
        theta = weight.clone().requires_grad_()
        student = x_all @ theta.T
        if name == "uniformity":
            loss = carp_uniformity_loss(student, teacher_all, expected_partition)
            # Every rank returns the pooled value itself.
            torch.testing.assert_close(r0[name][0], loss.detach())
            torch.testing.assert_close(r1[name][0], loss.detach())
        else:
            loss = carp_loss(student, teacher_all, expected_partition).loss
            # L_c is a per-rank mean: DDP-style averaging of the per-rank losses gives the pooled one.
            torch.testing.assert_close((r0[name][0] + r1[name][0]) / 2, loss.detach())
        loss.backward()
        ddp_grad = (r0[name][1] + r1[name][1]) / 2  # DDP averages gradients over the two ranks
        torch.testing.assert_close(ddp_grad, theta.grad)
