"""SOP / SOP-MIM loss functions against the golden cases of docs/method.md §18 and a dense reference."""

import math

import pytest
import torch
from torch.nn.functional import normalize

from sop_hf.losses import (
    LOG_CLAMP,
    SOPClassLoss,
    SOPPatchLoss,
    SupportPrototypes,
    build_support_prototypes,
    draw_anchor_indices,
    koleo_loss,
    masked_patch_cross_entropy,
    multi_view_cross_entropy,
    prototype_assignments,
)


def unit(*shape, dtype=torch.float64, generator=None):
    return normalize(torch.randn(*shape, dtype=dtype, generator=generator), dim=-1)


def dense_assignments(z, prototypes, temperature):
    """The formula written out: softmax over all supports, then the dense vote matrix Y."""
    supports = prototypes.supports.reshape(-1, prototypes.supports.shape[-1])
    return (z @ supports.T / temperature).softmax(-1) @ prototypes.dense_votes()


def hand_example():
    supports = torch.tensor([[0.8, 0.6], [1, 0], [-0.8, -0.6], [-1, 0]], dtype=torch.float64).reshape(2, 2, 2)
    votes = torch.tensor([[0.8, 0.9], [0.8, 0.9]], dtype=torch.float64)
    return SupportPrototypes(supports, votes)


# --- build_support_prototypes -------------------------------------------------------------------------------


def test_votes__dense_rows_sum_to_one_and_anchor_vote():
    memory = unit(300, 8)
    protos = build_support_prototypes(memory, torch.arange(10), num_support=4, smoothing=0.1)
    dense = protos.dense_votes()
    assert dense.shape == (40, 10)
    torch.testing.assert_close(dense.sum(1), torch.ones(40, dtype=torch.float64))
    assert torch.all(protos.votes[:, -1] == 0.9)
    assert torch.allclose(dense[3::4].max(1).values, torch.full((10,), 0.9, dtype=torch.float64))


def test_votes__single_support_is_label_smoothing_512():
    memory = unit(1024, 8)
    protos = build_support_prototypes(memory, torch.arange(512), num_support=1, smoothing=0.1)
    dense = protos.dense_votes()
    assert torch.all(dense.diagonal() == 0.9)
    off = dense[~torch.eye(512, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 0.1 / 511))
    assert abs(0.1 / 511 - 1.9569e-4) < 1e-8


def test_supports__anchor_last_and_never_a_neighbour():
    memory = unit(200, 6)
    anchor_idx = torch.randperm(200)[:20]
    protos = build_support_prototypes(memory, anchor_idx, num_support=5, smoothing=0.1)
    assert protos.supports.shape == (20, 5, 6) and protos.votes.shape == (20, 5)
    torch.testing.assert_close(protos.supports[:, -1], memory[anchor_idx])
    anchors = memory[anchor_idx]
    for i in range(20):
        for e in range(4):
            # no support equals any anchor row (rows are distinct random vectors)
            assert (protos.supports[i, e] - anchors).abs().sum(-1).min() > 1e-6


def test_supports__are_the_true_nearest_neighbours_outside_the_anchors():
    memory = unit(100, 4)
    anchor_idx = torch.tensor([3, 7, 50])
    protos = build_support_prototypes(memory, anchor_idx, num_support=4, smoothing=0.0)
    pool = torch.ones(100, dtype=torch.bool)
    pool[anchor_idx] = False
    for i, a in enumerate(anchor_idx):
        scores = memory[pool] @ memory[a]
        expected = scores.topk(3).values
        torch.testing.assert_close(protos.votes[i, :3], expected.clamp(0, 1))


def test_supports__exclude_idx_and_anchor_columns_even_when_identical():
    # Anchor rows duplicated elsewhere: the duplicates are legal neighbours, the anchors themselves are not.
    memory = unit(50, 4)
    memory[10] = memory[0]
    protos = build_support_prototypes(memory, torch.tensor([0, 1]), num_support=2, smoothing=0.1,
                                      exclude_idx=torch.tensor([10]))  # fmt: skip
    assert not torch.equal(protos.supports[0, 0], memory[0])  # row 10 (== row 0) excluded too


def test_votes__negative_cosines_clamped_to_zero():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    protos = build_support_prototypes(memory, torch.tensor([0, 1]), num_support=2, smoothing=0.1)
    assert protos.votes.min() >= 0 and protos.votes.max() <= 1
    assert (protos.votes[:, 0] == 0).all()  # nearest non-anchor neighbours are orthogonal/antipodal


def test_build__validation_errors():
    memory = unit(20, 4)
    with pytest.raises(ValueError, match="at least 2 anchors"):
        build_support_prototypes(memory, torch.tensor([0]), 2, 0.1)
    with pytest.raises(ValueError, match=r"num_support must be in \[1, 19\]"):
        build_support_prototypes(memory, torch.tensor([0, 1]), 20, 0.1)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\]"):
        build_support_prototypes(memory, torch.tensor([0, 1]), 2, 1.5)


def test_build__single_support_runs_no_neighbour_search(monkeypatch):
    memory = unit(64, 4)

    def forbidden(*args, **kwargs):
        raise AssertionError("topk must not run for num_support=1")

    monkeypatch.setattr(torch.Tensor, "topk", forbidden)
    protos = build_support_prototypes(memory, torch.arange(8), 1, 0.1)
    assert protos.supports.shape == (8, 1, 4)


# --- prototype_assignments ------------------------------------------------------------------------------------


def test_assignments__hand_example():
    protos = hand_example()
    p_s = prototype_assignments(torch.tensor([[1.0, 0.0]], dtype=torch.float64), protos, 0.1)
    p_t = prototype_assignments(torch.tensor([[0.0, 1.0]], dtype=torch.float64), protos, 0.04)
    torch.testing.assert_close(p_s, torch.tensor([[0.888080, 0.111920]], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(p_t, torch.tensor([[0.8, 0.2]], dtype=torch.float64), atol=1e-6, rtol=0)
    ce = multi_view_cross_entropy([p_s, p_s], [p_t, p_t])
    assert abs(ce.item() - 0.532949) < 1e-6


@pytest.mark.parametrize("num_support", [1, 2, 9])
def test_assignments__equal_dense_formula_values_and_gradients(num_support):
    g = torch.Generator().manual_seed(num_support)
    memory = unit(400, 16, generator=g)
    protos = build_support_prototypes(memory, torch.randperm(400, generator=g)[:12], num_support, 0.1)
    z = unit(7, 16, generator=g).requires_grad_()
    target = torch.rand(7, 12, dtype=torch.float64, generator=g)
    p = prototype_assignments(z, protos, 0.1)
    dense = dense_assignments(z, protos, 0.1)
    torch.testing.assert_close(p, dense, atol=1e-14, rtol=1e-12)
    (grad,) = torch.autograd.grad((p * target).sum(), z)
    (grad_dense,) = torch.autograd.grad((dense * target).sum(), z)
    torch.testing.assert_close(grad, grad_dense, atol=1e-12, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda x: prototype_assignments(x, protos, 0.1), (z,))


def test_assignments__row_chunking_gives_the_same_values_and_gradients(monkeypatch):
    import sop_hf.losses.sop as losses

    protos = build_support_prototypes(unit(300, 8), torch.arange(7), 3, 0.1)
    z = unit(23, 8).requires_grad_()
    p_full = prototype_assignments(z, protos, 0.1)
    (g_full,) = torch.autograd.grad(p_full[:, 0].sum(), z)
    monkeypatch.setattr(losses, "ASSIGN_CHUNK", 5)
    p_chunked = prototype_assignments(z, protos, 0.1)
    (g_chunked,) = torch.autograd.grad(p_chunked[:, 0].sum(), z)
    torch.testing.assert_close(p_chunked, p_full)
    torch.testing.assert_close(g_chunked, g_full)
    assert torch.autograd.gradcheck(lambda x: prototype_assignments(x, protos, 0.1), (z,))


@pytest.mark.parametrize("search_dtype", [torch.bfloat16, "float32"])
def test_class_loss__reduced_precision_search_same_neighbours_on_separated_data(search_dtype):
    # Well-separated clusters: a bf16 search picks the same neighbours, and votes are recomputed in float32.
    g = torch.Generator().manual_seed(0)
    centres = unit(16, 32, dtype=torch.float32, generator=g)
    # clusters of 4 (anchor + its 3 neighbours); their order may differ under near-ties, their set may not
    memory = normalize(centres.repeat_interleave(4, 0) + 0.05 * torch.randn(64, 32, generator=g), dim=1)
    anchor_idx = torch.arange(0, 64, 4)
    exact = build_support_prototypes(memory, anchor_idx, 4, 0.1)
    low = build_support_prototypes(memory, anchor_idx, 4, 0.1,
                                   search_dtype=None if search_dtype == "float32" else search_dtype)  # fmt: skip
    order_exact, order_low = exact.votes.argsort(dim=1), low.votes.argsort(dim=1)
    torch.testing.assert_close(low.votes.gather(1, order_low), exact.votes.gather(1, order_exact))
    torch.testing.assert_close(
        low.supports.gather(1, order_low[..., None].expand_as(low.supports)),
        exact.supports.gather(1, order_exact[..., None].expand_as(exact.supports)),
    )
    assert low.votes.dtype == torch.float32
    with pytest.raises(ValueError, match="search_dtype must be one of"):
        SOPClassLoss(8, 3, 1, 0.1, search_dtype="int8")


def test_assignments__float32_close_to_float64_at_paper_shape():
    memory = unit(8192, 32)
    protos = build_support_prototypes(memory, torch.randperm(8192)[:2048], 9, 0.1)
    z = unit(4, 32)
    p64 = prototype_assignments(z, protos, 0.1)
    protos32 = SupportPrototypes(protos.supports.float(), protos.votes.float())
    p32 = prototype_assignments(z.float(), protos32, 0.1)
    assert p32.dtype == torch.float32
    assert ((p32.double() - p64).abs() / p64).max() < 1e-4


def test_assignments__rows_sum_to_one_and_leading_shape():
    memory = unit(100, 8, dtype=torch.float32)
    protos = build_support_prototypes(memory, torch.arange(5), 3, 0.1)
    p = prototype_assignments(unit(2, 3, 8, dtype=torch.float32), protos, 0.04)
    assert p.shape == (2, 3, 5) and p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3))


def test_assignments__degenerate_memory_gives_uniform():
    memory = normalize(torch.ones(64, 8, dtype=torch.float64), dim=1)
    protos = build_support_prototypes(memory, torch.arange(32), 9, 0.1)
    assert torch.allclose(protos.votes[:, :-1], torch.ones(32, 8, dtype=torch.float64))
    for temperature in (0.04, 0.1, 1.0):
        p = prototype_assignments(unit(5, 8), protos, temperature)
        torch.testing.assert_close(p, torch.full((5, 32), 1 / 32, dtype=torch.float64))


def test_assignments__sharp_teacher_equals_best_support_vote_row():
    protos = build_support_prototypes(unit(100, 8), torch.arange(6), 3, 0.1)
    z = protos.supports[2, 1:2] * 1.0  # exactly a support of prototype 2
    p = prototype_assignments(z, protos, 1e-4)
    torch.testing.assert_close(p[0], protos.dense_votes()[2 * 3 + 1], atol=1e-8, rtol=0)


def test_assignments__permuting_prototypes_permutes_probabilities():
    protos = build_support_prototypes(unit(100, 8), torch.arange(6), 3, 0.1)
    perm = torch.randperm(6)
    permuted = SupportPrototypes(protos.supports[perm], protos.votes[perm])
    z_s, z_t = unit(4, 8), unit(4, 8)
    p = prototype_assignments(z_s, protos, 0.1)
    torch.testing.assert_close(prototype_assignments(z_s, permuted, 0.1), p[:, perm])
    q, q_perm = prototype_assignments(z_t, protos, 0.04), prototype_assignments(z_t, permuted, 0.04)
    ce = multi_view_cross_entropy([p, p], [q, q])
    ce_perm = multi_view_cross_entropy([p[:, perm], p[:, perm]], [q_perm, q_perm])
    torch.testing.assert_close(ce, ce_perm)


def test_assignments__bf16_autocast_gives_float32_and_finite():
    memory = unit(256, 16, dtype=torch.float32)
    protos = build_support_prototypes(memory, torch.arange(16), 3, 0.1)
    z = unit(8, 16, dtype=torch.float32).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = prototype_assignments(z, protos, 1e-3)  # extreme temperature: most p underflow
        q = prototype_assignments(unit(8, 16, dtype=torch.float32).flip(0), protos, 1e-3)
        loss = multi_view_cross_entropy([p, p], [q, q])
    assert p.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_assignments__bad_temperature():
    protos = hand_example()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        prototype_assignments(torch.zeros(1, 2, dtype=torch.float64), protos, 0.0)


# --- cross-entropies ------------------------------------------------------------------------------------------


def test_zero_gradient__when_teacher_equals_student():
    protos = build_support_prototypes(unit(200, 8), torch.arange(10), 4, 0.1)
    z = unit(6, 8).requires_grad_()
    p = prototype_assignments(z, protos, 0.1)
    q = prototype_assignments(z.detach(), protos, 0.1)
    loss = -(q * p.log()).sum(-1).mean()
    entropy = -(q * q.log()).sum(-1).mean()
    torch.testing.assert_close(loss, entropy)
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().max() < 1e-12


def test_gradient__matches_analytic_formula_wrt_logits():
    # dL/da_j = s_j (1 - sum_c q_c Y_jc / p_c), per row.
    protos = build_support_prototypes(unit(200, 8), torch.arange(5), 3, 0.1)
    supports = protos.supports.reshape(-1, 8)
    logits = (unit(3, 8) @ supports.T / 0.1).requires_grad_()
    s = logits.softmax(-1)
    q = torch.rand(3, 5, dtype=torch.float64).softmax(-1)
    from sop_hf.losses.sop import _aggregate_votes

    p = _aggregate_votes(logits.softmax(-1).reshape(3, 5, 3), protos.votes)  # [N, P', E] -> [N, P']
    loss = -(q * p.log()).sum()
    (grad,) = torch.autograd.grad(loss, logits)
    y = protos.dense_votes()
    expected = s * (1 - (q[:, None, :] * y[None] / p[:, None, :]).sum(-1))
    torch.testing.assert_close(grad, expected.detach())


@pytest.mark.parametrize("num_local,expected_pairs", [(0, 2), (6, 14), (10, 22)])
def test_pairing__counts_and_no_same_view_pair(num_local, expected_pairs):
    batch, protos = 3, 4
    student = [torch.full((batch, protos), 0.25, dtype=torch.float64) for _ in range(2 + num_local)]
    teacher = [torch.full((batch, protos), 0.25, dtype=torch.float64) for _ in range(2)]
    # Put a spike in student view 0 where teacher view 0 is sharp: if (0, 0) were paired the loss would change.
    student[0] = torch.tensor([[1e-9, 1 - 2e-9, 5e-10, 5e-10]], dtype=torch.float64).repeat(batch, 1)
    teacher[0] = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64).repeat(batch, 1)
    loss = multi_view_cross_entropy(student, teacher)
    # pairs with student view 0: only (0, 1) -> teacher 1 is uniform -> -mean log p0.
    ce_0_1 = -(0.25 * torch.log(student[0][0])).sum()
    others = expected_pairs - 1
    # every other pair: teacher 1 vs uniform student -> ln 4; teacher 0 vs uniform student -> ln 4
    expected = (ce_0_1 + others * math.log(4)) / expected_pairs
    torch.testing.assert_close(loss, expected)


def test_pairing__identical_views_give_single_term_ce():
    p = torch.rand(5, 7, dtype=torch.float64).softmax(-1)
    q = torch.rand(5, 7, dtype=torch.float64).softmax(-1)
    single = -(q * p.log()).sum(-1).mean()
    torch.testing.assert_close(multi_view_cross_entropy([p, p, p], [q, q]), single)


def test_multi_view__needs_a_pair():
    p = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="i != j"):
        multi_view_cross_entropy([p], [p])


def test_cross_entropy__clamped_log_and_zero_for_zero_q():
    p = torch.tensor([[1.0, 0.0]])
    q = torch.tensor([[0.0, 1.0]])
    loss = multi_view_cross_entropy([p, p], [q, q])
    assert torch.isfinite(loss) and abs(loss.item() + math.log(LOG_CLAMP)) < 1e-3
    assert multi_view_cross_entropy([p, p], [p, p]).item() == 0.0


def test_masked_ce__normalisation_with_empty_and_full_masks():
    batch, tokens, protos = 2, 4, 3
    p = torch.rand(batch, tokens, protos, dtype=torch.float64).softmax(-1)
    q = torch.rand(batch, tokens, protos, dtype=torch.float64).softmax(-1)
    token_ce = -(q * p.log()).sum(-1)  # [B, L]
    masks = torch.tensor([[False] * 4, [True] * 4])  # image 0 no masked token, image 1 all masked
    loss = masked_patch_cross_entropy([p], [q], [masks])
    torch.testing.assert_close(loss, (0 + token_ce[1].mean()) / 2)
    partial = torch.tensor([[True, False, False, True], [False, True, False, False]])
    loss = masked_patch_cross_entropy([p, p], [q, q], [partial, masks])
    view0 = ((token_ce[0, 0] + token_ce[0, 3]) / 2 + token_ce[1, 1]) / 2
    view1 = token_ce[1].mean() / 2
    torch.testing.assert_close(loss, (view0 + view1) / 2)


def test_masked_ce__view_count_mismatch():
    p = torch.full((1, 2, 3), 1 / 3)
    with pytest.raises(ValueError, match="same non-zero number"):
        masked_patch_cross_entropy([p, p], [p], [torch.ones(1, 2, dtype=torch.bool)])


def test_gradient_isolation__only_student_embeddings_receive_gradients():
    memory = unit(128, 8).requires_grad_()
    teacher = unit(4, 8).requires_grad_()
    student = unit(4, 8).requires_grad_()
    protos = build_support_prototypes(memory, torch.arange(6), 3, 0.1)
    assert not protos.supports.requires_grad and not protos.votes.requires_grad
    p = prototype_assignments(student, protos, 0.1)
    q = prototype_assignments(teacher, protos, 0.04)
    multi_view_cross_entropy(p.split(2), q.split(2)).backward()
    assert student.grad is not None and memory.grad is None and teacher.grad is None


# --- loss modules ---------------------------------------------------------------------------------------------


def test_class_loss__degenerate_memory_gives_ln_p():
    memory = normalize(torch.ones(256, 8), dim=1)
    loss_fn = SOPClassLoss(num_anchors=64, num_support=9, num_tasks=4, smoothing=0.1)
    out = loss_fn(unit(12, 8, dtype=torch.float32), unit(4, 8, dtype=torch.float32), memory, 0.1, 0.04,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert abs(out.loss.item() - math.log(32)) < 1e-5 and abs(math.log(32) - 3.465736) < 1e-6
    assert abs(out.teacher_entropy.item() - math.log(32)) < 1e-5


def test_patch_loss__degenerate_memory_gives_ln_512_times_masked_fraction():
    memory = normalize(torch.ones(1024, 8), dim=1)
    loss_fn = SOPPatchLoss(num_anchors=512, num_tasks=1, smoothing=0.1)
    masks = torch.zeros(8, 5, dtype=torch.bool)  # 2 views x 4 images
    masks[[0, 1, 4], 2] = True  # view 0: 2 of 4 images masked; view 1: 1 of 4
    out = loss_fn(unit(8, 5, 8, dtype=torch.float32), unit(8, 5, 8, dtype=torch.float32), masks, memory, 0.1, 0.04)
    expected = math.log(512) * (2 / 4 + 1 / 4) / 2
    assert abs(out.loss.item() - expected) < 1e-4 and abs(math.log(512) - 6.238325) < 1e-6


def test_class_loss__tasks_draw_fresh_anchors_and_are_seeded():
    memory = unit(512, 8, dtype=torch.float32)
    student, teacher = unit(6, 8, dtype=torch.float32), unit(4, 8, dtype=torch.float32)
    loss_fn = SOPClassLoss(num_anchors=32, num_support=3, num_tasks=3, smoothing=0.1)
    a = loss_fn(student, teacher, memory, 0.1, 0.04, generator=torch.Generator().manual_seed(5)).loss
    b = loss_fn(student, teacher, memory, 0.1, 0.04, generator=torch.Generator().manual_seed(5)).loss
    c = loss_fn(student, teacher, memory, 0.1, 0.04, generator=torch.Generator().manual_seed(6)).loss
    assert a == b and a != c
    g = torch.Generator().manual_seed(1)
    draws = [draw_anchor_indices(512, 32, 16, g, torch.device("cpu")) for _ in range(3)]
    assert not torch.equal(draws[0][0], draws[1][0])
    kept, dropped = draws[0]
    assert kept.numel() == 16 and dropped.numel() == 16 and len(set(torch.cat(draws[0]).tolist())) == 32


def test_anchor_selection__uniform_chi_square():
    # Library decision 17a: kept anchors are a uniformly random subset; every row equally likely.
    size, trials = 40, 4000
    counts = torch.zeros(size)
    g = torch.Generator().manual_seed(0)
    for _ in range(trials):
        kept, _ = draw_anchor_indices(size, 8, 4, g, torch.device("cpu"))
        counts[kept] += 1
    expected = trials * 4 / size
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 77.4  # 99.9th percentile of chi-square with 39 degrees of freedom


def test_koleo__golden_values():
    basis = torch.eye(4, dtype=torch.float64)
    assert abs(koleo_loss(basis).item() + 0.5 * math.log(2)) < 1e-7
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert abs(koleo_loss(antipodal).item() + math.log(2)) < 1e-7
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.ones(1, 3))


def test_loss_path__compiles_without_graph_breaks_given_anchors():
    """With anchors drawn outside (as SOPForPreTraining does), the SOP and SOP-MIM losses trace to one graph each."""
    import torch._dynamo

    from sop_hf.losses.sop import SOPClassLoss, SOPPatchLoss

    torch._dynamo.reset()
    memory = torch.nn.functional.normalize(torch.randn(128, 16), dim=1)
    student = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_()
    teacher = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    class_loss = SOPClassLoss(32, 5, 2, 0.1)
    anchors = class_loss.draw_anchors(128, torch.Generator().manual_seed(0), memory.device)
    explained = torch._dynamo.explain(lambda s, t, m, a: class_loss(s, t, m, 0.1, 0.04, 2, anchors=a).loss)(
        student, teacher, memory, anchors
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    patch_loss = SOPPatchLoss(16, 1, 0.1)
    patch_anchors = patch_loss.draw_anchors(128, torch.Generator().manual_seed(1), memory.device)
    patches = torch.nn.functional.normalize(torch.randn(4, 6, 16), dim=-1)
    masks = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) < 0.5
    explained = torch._dynamo.explain(lambda s, t, k, m, a: patch_loss(s, t, k, m, 0.1, 0.04, 2, anchors=a).loss)(
        patches.requires_grad_(), patches.detach(), masks, memory, patch_anchors
    )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    # the precomputed anchors give the same loss as the generator inside
    direct = class_loss(student, teacher, memory, 0.1, 0.04, 2, torch.Generator().manual_seed(0)).loss
    assert torch.equal(direct, class_loss(student, teacher, memory, 0.1, 0.04, 2, anchors=anchors).loss)
