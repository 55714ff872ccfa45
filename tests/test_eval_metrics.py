"""Eval metrics against hand-computed values: PSNR / SSIM of decoded videos, attention recall of a layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import radial_diffusers as rd
from radial_diffusers.evaluation.metrics import as_frames, attention_recall, video_psnr, video_ssim


def test_identical_videos_give_infinite_psnr_and_ssim_one():
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (4, 24, 32, 3), generator=g, dtype=torch.uint8)
    assert torch.isinf(video_psnr(video, video)).all()
    torch.testing.assert_close(video_ssim(video, video), torch.ones(4, dtype=torch.float64))


def test_psnr_of_a_known_error_per_frame():
    """A frame off by exactly d everywhere has MSE d^2: PSNR = -20 log10(d) (data range 1)."""
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64) * 0.5 + 0.25  # (F, C, H, W), no clamping
    offsets = torch.tensor([0.01, 0.05, 0.1], dtype=torch.float64)
    test = ref + offsets.view(3, 1, 1, 1) * torch.where(torch.rand(ref.shape, generator=g) < 0.5, -1, 1)
    want = torch.tensor([-20 * math.log10(d) for d in offsets.tolist()], dtype=torch.float64)
    torch.testing.assert_close(video_psnr(ref, test), want)


def _wang_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) SSIM of two (H, W, C) float64 frames in [0, 1]: Gaussian window 11, sigma 1.5, valid
    (separable numpy) filtering, the map averaged over the interior and the channels."""
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()

    def blur(img):
        rows = np.stack([np.convolve(r, g, mode="valid") for r in img])
        return np.stack([np.convolve(c, g, mode="valid") for c in rows.T]).T

    c1, c2, out = 0.01 ** 2, 0.03 ** 2, []
    for ch in range(a.shape[-1]):
        p, q = a[..., ch], b[..., ch]
        mp, mq = blur(p), blur(q)
        vp, vq, cov = blur(p * p) - mp ** 2, blur(q * q) - mq ** 2, blur(p * q) - mp * mq
        out.append((((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp ** 2 + mq ** 2 + c1) * (vp + vq + c2))).mean())
    return float(np.mean(out))


def test_ssim_is_wang_et_al_on_the_frame_interior():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 32, 40, 3))
    vid = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    want = [_wang_ssim(ref[i], vid[i]) for i in range(3)]
    torch.testing.assert_close(video_ssim(ref, vid), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 11x11 pixels"):
        video_ssim(ref[:, :10], vid[:, :10])


def test_ssim_falls_with_noise_and_layouts_are_read_alike():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(2, 40, 40, 3, generator=g)
    small = (ref + 0.02 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    large = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    s_small, s_large = video_ssim(ref, small), video_ssim(ref, large)
    assert (s_small < 1).all() and (s_large < s_small).all()
    # channels last (numpy, uint8) and channels first (float tensor) of the same frames agree
    as_uint8 = (ref.numpy() * 255).round().astype(np.uint8)
    first = torch.from_numpy(as_uint8).permute(0, 3, 1, 2).double() / 255
    torch.testing.assert_close(as_frames(as_uint8), first)


def test_shape_mismatch_and_batches_are_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        video_psnr(torch.rand(3, 8, 8, 3), torch.rand(4, 8, 8, 3))
    with pytest.raises(ValueError, match="index a batch first"):
        video_psnr(torch.rand(1, 3, 8, 8, 3), torch.rand(1, 3, 8, 8, 3))


def _qk(b=2, s=70, h=3, d=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, h, d, generator=g) * 1.5, torch.randn(b, s, h, d, generator=g) * 1.5


def test_recall_of_a_dense_layout_is_one():
    q, k = _qk()
    layout = rd.BlockLayout.dense(70, block_size=16)
    recall = attention_recall(q, k, layout, torch.arange(0, 70, 7))
    torch.testing.assert_close(recall, torch.ones(3))


def test_recall_equals_the_mass_of_an_explicit_softmax():
    q, k = _qk()
    s, bs = 70, 16
    mask = torch.tensor([[1, 0, 0, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1], [1, 0, 0, 1, 0], [0, 0, 1, 0, 1]],
                        dtype=torch.bool)
    layout = rd.BlockLayout.from_block_mask(mask, block_size=bs, seq_len=s)
    rows = torch.tensor([0, 5, 17, 40, 63, 69])
    kv = 66  # the last 4 keys are padding
    got = attention_recall(q, k, layout, rows, kv_length=kv)
    want = torch.zeros(3, dtype=torch.float64)
    for b in range(2):
        for hh in range(3):
            for r in rows.tolist():
                logits = [float(q[b, r, hh].double() @ k[b, j, hh].double()) / math.sqrt(8) for j in range(kv)]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                kept = sum(w for j, w in enumerate(weights) if mask[r // bs, j // bs])
                want[hh] += kept / sum(weights)
    want /= 2 * len(rows)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (got < 1).all() and (got > 0).all()


def test_ssim_of_a_long_video_is_taken_a_few_frames_at_a_time(monkeypatch):
    """A long video's frames go through SSIM in chunks bounded in memory (torchmetrics' float64 SSIM, used before,
    unfolded the whole batch: 28.7 GB for 161 frames at 192x192, which stopped `radial-diffusers eval` at its
    default size), with the same values as all at once."""
    from radial_diffusers.evaluation import metrics

    assert metrics._SSIM_CHUNK_BYTES // (15 * 3 * 192 * 192 * 8) == 40  # 161 frames at 192x192: 40 a chunk
    rng = np.random.default_rng(3)
    ref = rng.random((7, 24, 24, 3))
    vid = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    whole = metrics.video_ssim(ref, vid)
    chunks = []
    original = metrics._ssim_frames

    def counted(a, b, taps):
        chunks.append(a.shape[0])
        return original(a, b, taps)

    monkeypatch.setattr(metrics, "_ssim_frames", counted)
    monkeypatch.setattr(metrics, "_SSIM_CHUNK_BYTES", 3 * 15 * 3 * 24 * 24 * 8)  # 3 frames a chunk
    torch.testing.assert_close(metrics.video_ssim(ref, vid), whole, rtol=0, atol=1e-15)
    assert chunks == [3, 3, 1]
    torch.testing.assert_close(whole, torch.tensor([_wang_ssim(ref[i], vid[i]) for i in range(7)],
                                                   dtype=torch.float64), rtol=0, atol=1e-12)
