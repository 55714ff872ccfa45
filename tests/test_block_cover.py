"""The PyTorch path's batching plan: a rectangle cover of the kept blocks, its buckets, and the log-sum-exp merge."""

from __future__ import annotations

import pytest
import torch

import radial_diffusers as rd
from attention_reference import assert_torch_path_matches_dense, random_block_mask
from radial_diffusers.attention import block_cover, torch_ref


def _covered(rects, n):
    count = torch.zeros(n, n, dtype=torch.long)
    for rows, keys in rects:
        count[rows[:, None], keys[None, :]] += 1
    return count


@pytest.mark.parametrize("n,density,max_rows,min_keys", [(13, 0.4, 4, 2), (30, 0.7, 8, 1), (24, 0.15, 3, 3),
                                                         (9, 1.0, 16, 1)])
def test_cover_is_an_exact_partition(n, density, max_rows, min_keys):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    mask = random_block_mask(n, density, gen, empty_rows=1, full_rows=1)
    rects = block_cover.rectangle_cover(mask, max_rows, min_keys)
    assert torch.equal(_covered(rects, n), mask.long())  # every kept block once, nothing else
    for rows, keys in rects:
        assert 1 <= rows.numel() <= max_rows and keys.numel() >= 1
        assert torch.equal(rows, rows.sort().values) and torch.equal(keys, keys.sort().values)


def test_cover_groups_the_radial_mask_into_tall_rectangles():
    """At the demo's geometry no two query blocks share a key set, yet most kept blocks go to rectangles of 2 or
    more query blocks, and a kept block's rectangle has 4 query blocks on average (256 query rows per call)."""
    mask = rd.radial_block_mask(17, 256, model="wan", block_size=64, decay_factor=0.2)
    assert torch.unique(mask, dim=0).shape[0] == mask.shape[0]
    rects = block_cover.rectangle_cover(mask, 8, 8)
    assert torch.equal(_covered(rects, mask.shape[0]), mask.long())
    kept = mask.sum().item()
    assert sum(r.numel() * k.numel() for r, k in rects if r.numel() >= 2) / kept > 0.75
    assert sum(r.numel() ** 2 * k.numel() for r, k in rects) / kept > 3.5


def test_identical_key_sets_share_a_rectangle():
    """Even when narrower than ``min_keys``, and up to ``max_rows``; the identical-set plan splits the same way."""
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[[0, 2, 5], :3] = True
    mask[[1, 3], 2:] = True
    want = [([0, 2], [0, 1, 2]), ([1, 3], [2, 3, 4, 5]), ([5], [0, 1, 2])]
    rects = block_cover.rectangle_cover(mask, 2, 8)
    assert sorted((r.tolist(), k.tolist()) for r, k in rects) == want
    assert sorted((r.tolist(), k.tolist()) for r, k in block_cover._identical_sets(mask, 2)) == want


def test_cover_refuses_a_mask_that_is_not_bool():
    with pytest.raises(TypeError, match="bool"):
        block_cover.rectangle_cover(torch.ones(3, 3, dtype=torch.uint8), 2, 1)


def test_large_layouts_fall_back_to_identical_sets(monkeypatch):
    """Past the cover's work bound the plan batches identical key sets, still at most the target rows each."""
    layout = rd.BlockLayout.dense(64 * 16, 16)
    monkeypatch.setattr(block_cover, "_MAX_COVER_WORK", 64 * 64 * 64 - 1)
    plan = block_cover.plan_for(layout.counts, layout.indices, 16)
    assert [(tuple(b.rows.shape), tuple(b.keys.shape)) for b in plan] == [((2, 32), (2, 64))]


def test_buckets_hold_each_query_block_once_and_know_when_they_are_fresh(small_rectangles):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    mask = random_block_mask(20, 0.5, gen)
    layout = rd.BlockLayout.from_block_mask(mask, 16)
    buckets = block_cover.plan_for(layout.counts, layout.indices, 16)
    assert block_cover.plan_for(layout.counts, layout.indices, 16) is buckets  # cached per layout
    seen = torch.zeros(20, dtype=torch.bool)
    count = torch.zeros(20, 20, dtype=torch.long)
    for b in buckets:
        rows = b.rows.flatten()
        assert rows.unique().numel() == rows.numel()
        assert b.fresh == (not bool(seen[rows].any()))
        seen[rows] = True
        count[b.rows[:, :, None], b.keys[:, None, :]] += 1
    assert torch.equal(count, mask.long())
    assert not all(b.fresh for b in buckets)  # this density needs merges: the test below exercises them


@pytest.mark.parametrize("fallback", [False, True], ids=["greedy-cover", "identical-sets"])
@pytest.mark.parametrize("padded", [False, True], ids=["all-keys-valid", "key-padding"])
def test_merged_rectangles_match_dense(fallback, padded, small_rectangles, cpu_path, monkeypatch):
    """Forward (out and lse) and backward (through both) through rectangles merged by log-sum-exp, and through the
    identical-set plan used for very large layouts; with every key valid (the merge's finite shortcut) and with an
    unaligned tail and per-sample key padding; against the float64 dense reference."""
    if fallback:
        monkeypatch.setattr(block_cover, "_MAX_COVER_WORK", 0)
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    s = 180 if padded else 192
    layout = rd.BlockLayout.from_block_mask(random_block_mask(12, 0.6, gen, empty_rows=int(padded)), 16, s)
    if not fallback:
        assert not all(b.fresh for b in block_cover.plan_for(layout.counts, layout.indices, 16))
    q, k, v = (torch.randn(2, s, 2, 16, generator=gen).requires_grad_(True) for _ in range(3))
    kv_lengths = torch.tensor([s, 131]) if padded else None
    assert_torch_path_matches_dense(q, k, v, layout, kv_lengths)


@pytest.mark.parametrize("finite", [False, True])
def test_merge_softmax_parts_equals_the_softmax_over_both_key_sets(finite):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    scores = torch.randn(3, 5, 10, generator=gen, dtype=torch.float64)
    values = torch.randn(3, 10, 4, generator=gen, dtype=torch.float64)
    if not finite:
        scores[0, 1, :6] = float("-inf")  # no key in the first part
        scores[1, 2, :] = float("-inf")  # no key at all

    def part(s, v):
        lse = torch.logsumexp(s, -1)
        safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        return torch.exp(s - safe[..., None]) @ v, lse

    out, lse = torch_ref.merge_softmax_parts(*part(scores[..., :6], values[:, :6]),
                                             *part(scores[..., 6:], values[:, 6:]), finite=finite)
    want_out, want_lse = part(scores, values)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)
    if not finite:
        assert lse[1, 2] == float("-inf") and (out[1, 2] == 0).all()
