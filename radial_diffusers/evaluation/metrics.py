"""Quality metrics of a video against a reference (PSNR, SSIM per frame) and the attention recall of a layout.

PSNR comes from ``torchmetrics`` (a dependency). SSIM is Wang et al.'s, filtered here separably in float64
(torchmetrics' float64 SSIM runs a 121-tap conv2d that CPU torch unfolds: 16x slower and 28.7 GB at 161 frames
of 192x192). The inputs are decoded videos as the pipelines return them with ``output_type="np"`` or ``"pt"``.

Recall is the share of the softmax mass that the kept blocks hold: for sampled query rows ``i``,
``sum_{j kept} softmax(q_i k^T * scale)_j`` over the valid keys, averaged over rows, heads and the batch. A dense
layout has recall 1; the mass a sparse layout drops is ``1 - recall``.

Example:
    >>> import torch
    >>> from radial_diffusers.evaluation.metrics import video_psnr
    >>> ref = torch.rand(5, 16, 16, 3)
    >>> video_psnr(ref, ref).isinf().all().item()
    True
"""

from __future__ import annotations

import math

import torch

from ..layout import BlockLayout

__all__ = ["as_frames", "video_psnr", "video_ssim", "finite_mean", "attention_recall", "softmax_rows", "kept_mass"]


def as_frames(video) -> torch.Tensor:
    """A video as float64 frames ``(F, C, H, W)`` in [0, 1].

    Accepts ``(F, H, W, C)`` (numpy or tensor; uint8 in [0, 255] or float in [0, 1], as ``output_type="np"`` gives
    per video) and ``(F, C, H, W)`` float tensors (``output_type="pt"`` per video). Channels last is detected by a
    last dimension of 1, 3 or 4 with a larger second dimension."""
    x = torch.as_tensor(video)
    if x.ndim != 4:
        raise ValueError(f"expected one video (F, H, W, C) or (F, C, H, W), got shape {tuple(x.shape)}; "
                         "index a batch first (e.g. frames[0])")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        return x.double() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating-point frames, got {x.dtype}")
    return x.double().clamp(0.0, 1.0)


def _pair(reference, video) -> tuple[torch.Tensor, torch.Tensor]:
    ref, vid = as_frames(reference), as_frames(video)
    if ref.shape != vid.shape:
        raise ValueError(f"the videos differ in shape: reference {tuple(ref.shape)}, video {tuple(vid.shape)} "
                         "(F, C, H, W); generate both at the same frames, height and width")
    return ref, vid


def video_psnr(reference, video) -> torch.Tensor:
    """PSNR in dB of each frame of ``video`` against ``reference`` (data range 1): ``(F,)`` float64, ``inf`` where a
    frame is identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ref, vid = _pair(reference, video)
    return peak_signal_noise_ratio(vid, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))


def video_ssim(reference, video) -> torch.Tensor:
    """SSIM of each frame of ``video`` against ``reference`` as Wang et al. (2004) and scikit-image define it
    (Gaussian window 11, sigma 1.5, data range 1; the SSIM map averaged over the pixels whose window lies inside the
    frame, and over channels): ``(F,)`` float64, 1 where a frame is identical."""
    ref, vid = _pair(reference, video)
    if min(ref.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, got "
                         f"{tuple(ref.shape[-2:])}")
    x = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - (_SSIM_WINDOW - 1) / 2
    taps = torch.exp(-x ** 2 / (2 * _SSIM_SIGMA ** 2))
    taps = (taps / taps.sum()).tolist()
    # the five filtered maps and the two filter passes hold about 15 float64 copies of a frame
    chunk = max(1, _SSIM_CHUNK_BYTES // (15 * ref[0].numel() * 8))
    return torch.cat([_ssim_frames(ref[i:i + chunk], vid[i:i + chunk], taps)
                      for i in range(0, ref.shape[0], chunk)])


def _ssim_frames(ref: torch.Tensor, vid: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Mean SSIM map of float64 frames ``(F, C, H, W)``: the Gaussian filter as valid 1-D passes over W then H,
    each a sum of shifted slices (exact float64; CPU torch's float64 convolution unfolds its input instead)."""
    def blur(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim] - len(taps) + 1
        out = t.narrow(dim, 0, n) * taps[0]
        for i, w in enumerate(taps[1:], start=1):
            out.add_(t.narrow(dim, i, n), alpha=w)
        return out

    mx, my, xx, yy, xy = blur(blur(torch.stack([ref, vid, ref * ref, vid * vid, ref * vid]), -1), -2)
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim.mean(dim=(1, 2, 3))


_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
#: The bytes one SSIM chunk may hold (see :func:`video_ssim`): 40 frames at 192x192, 1 at 720p.
_SSIM_CHUNK_BYTES = 512 * 2**20


def finite_mean(values) -> float:
    """The mean of the finite values (PSNR is infinite on identical frames), ``inf`` when all are infinite, NaN when
    any is NaN (a frame with NaN pixels is never counted as identical, nor left out).

    >>> finite_mean([30.0, float("inf"), 40.0])
    35.0
    """
    values = [float(x) for x in values]
    if any(math.isnan(x) for x in values):
        return math.nan
    finite = [x for x in values if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else math.inf


def softmax_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, kv_length: int,
                 scale: float | None = None, head_chunk: int = 8) -> torch.Tensor:
    """Exact softmax probabilities of query ``rows`` over the first ``kv_length`` keys: ``(B, H, R, kv_length)``
    float32, computed ``head_chunk`` heads at a time (``q``, ``k``: ``(B, S, H, D)``; ``scale`` default
    ``1 / sqrt(D)``)."""
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    rows = rows.to(device=q.device, dtype=torch.long)
    qr, kv = q[:, rows], k[:, :kv_length]
    out = []
    for h0 in range(0, q.shape[2], head_chunk):
        scores = torch.einsum("brhd,bshd->bhrs", qr[:, :, h0:h0 + head_chunk].float(),
                              kv[:, :, h0:h0 + head_chunk].float()) * scale
        out.append(torch.softmax(scores, dim=-1))
    return torch.cat(out, dim=1)


def kept_mass(probs: torch.Tensor, layout: BlockLayout, rows: torch.Tensor) -> torch.Tensor:
    """``(H,)``: the share of ``probs`` (``(B, H, R, kv_length)`` from :func:`softmax_rows`) inside ``layout``'s kept
    blocks, averaged over the rows and the batch."""
    valid = probs.shape[-1]
    rows = rows.to(device=probs.device, dtype=torch.long)
    blocks = layout.to(probs.device).block_mask()  # (n_blocks, n_blocks) bool
    bs = layout.block_size
    keep = blocks[rows // bs][:, torch.arange(valid, device=probs.device) // bs]  # (R, valid)
    return (probs * keep).sum(-1).mean(dim=(0, 2))


def attention_recall(q: torch.Tensor, k: torch.Tensor, layout: BlockLayout, rows: torch.Tensor,
                     kv_length: int | None = None, scale: float | None = None) -> torch.Tensor:
    """Softmax mass inside ``layout``'s kept blocks for query ``rows``, per head.

    Args:
        q, k: ``(B, S, H, D)`` queries and keys of one attention call (any float dtype; computed in float32).
        layout: the block layout over the ``S`` tokens.
        rows: ``(R,)`` int64 query positions to measure (a sample: an exact softmax row costs ``S`` dot products).
        kv_length: keys at positions ``>= kv_length`` are padding and never attended (default: ``layout.seq_len``).
        scale: softmax scale (default ``1 / sqrt(D)``).

    Returns:
        ``(H,)`` float32: the mean over ``rows`` and the batch of each head's kept mass, in [0, 1].
    """
    s = q.shape[1]
    if k.shape != q.shape:
        raise ValueError(f"q and k must have the same (B, S, H, D) shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if s > layout.n_blocks * layout.block_size:
        raise ValueError(f"the layout covers {layout.n_blocks * layout.block_size} tokens, the call has {s}")
    valid = min(s, layout.seq_len if kv_length is None else int(kv_length))
    return kept_mass(softmax_rows(q, k, rows, valid, scale), layout, rows)
