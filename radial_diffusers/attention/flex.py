"""The same BSR layout through PyTorch FlexAttention (``BlockMask.from_kv_blocks`` + compiled ``flex_attention``).

A peer to measure our kernels against, not the default path. Blocks listed in the layout are "partial" blocks whose
``mask_mod`` masks keys at or beyond ``seq_len`` / ``kv_lengths``. Backward differentiates through FlexAttention.
"""

from __future__ import annotations

import functools

import torch

# Sparse block sizes below 128 need FlexAttention's own block size to match; this is passed via BLOCK_SIZE.


# How the last backward differentiated FlexAttention ("compiled" or "eager"); benchmarks print it.
BACKWARD_PATH = "compiled"


@functools.lru_cache(maxsize=None)
def _compiled_flex(training: bool = False):
    """Compiled FlexAttention; separate wrappers for inference and for the differentiable re-run of backward."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _block_mask(counts, indices, kv_lengths, block_size, seq_len, batch, device):
    from torch.nn.attention.flex_attention import BlockMask

    n = counts.shape[0]
    kv_num = counts.to(device=device, dtype=torch.int32).view(1, 1, n).expand(batch, 1, n).contiguous()
    idx = torch.zeros(n, n, dtype=torch.int32, device=device)
    width = indices.shape[1]
    idx[:, :width] = indices.to(device).clamp_min(0)
    kv_idx = idx.view(1, 1, n, n).expand(batch, 1, n, n).contiguous()
    if kv_lengths is None:
        limit = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    else:
        limit = kv_lengths.to(device=device, dtype=torch.int32).clamp_max(seq_len)

    def mask_mod(b, h, q_idx, kv_idx_):
        return kv_idx_ < limit[b]

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod, seq_lengths=(seq_len, seq_len)
    )


def block_mask_for(layout, batch: int, kv_lengths=None, device=None):
    """FlexAttention ``BlockMask`` of a :class:`~radial_diffusers.BlockLayout` (keys past ``seq_len`` /
    ``kv_lengths`` masked by ``mask_mod``)."""
    device = layout.device if device is None else device
    return _block_mask(layout.counts, layout.indices, kv_lengths, layout.block_size, layout.seq_len, batch, device)


def attention_out(q, k, v, block_mask, scale=None):
    """Output only, ``(B, S, H, D)`` in and out: the inference call FlexAttention supports on every device
    (benchmarks use it as the peer on CPU, where compiled FlexAttention cannot return the log-sum-exp)."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    return _compiled_flex()(qt, kt, vt, block_mask=block_mask, scale=scale).transpose(1, 2)


def _run(q, k, v, counts, indices, kv_lengths, block_size, seq_len, scale):
    if not q.is_cuda:
        raise NotImplementedError(
            "backend='flex' needs CUDA: compiled FlexAttention on CPU supports inference only and cannot return the "
            "log-sum-exp the op needs; use backend='torch' on CPU"
        )
    mask = _block_mask(counts, indices, kv_lengths, block_size, seq_len, q.shape[0], q.device)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    training = torch.is_grad_enabled()
    if training and block_size != 128:
        raise NotImplementedError(
            f"backend='flex' trains only with 128-token blocks (FlexAttention's backward kernel configs do not tile "
            f"{block_size}-token sparse blocks); use backend='torch' or 'triton'"
        )
    kernel_options = None if training else {"BLOCK_M": block_size, "BLOCK_N": block_size}
    out, lse = _compiled_flex(training)(qt, kt, vt, block_mask=mask, scale=scale, return_lse=True,
                                        kernel_options=kernel_options)
    # Rows with no attendable key: FlexAttention returns lse = -inf and out = 0, matching our convention.
    return out.transpose(1, 2), lse.float()


def forward(q, k, v, counts, indices, t_counts, t_indices, kv_lengths, block_size, seq_len, scale):
    with torch.no_grad():
        out, lse = _run(q, k, v, counts, indices, kv_lengths, block_size, seq_len, scale)
    return out.contiguous(), lse.contiguous()


def backward(grad_out, q, k, v, out, lse, delta, counts, indices, t_counts, t_indices, kv_lengths, block_size,
             seq_len, scale):
    # Recover dLSE from delta = rowsum(dO * O) - dLSE, then differentiate FlexAttention's forward.
    grad_lse = (grad_out.float() * out.float()).sum(-1).transpose(1, 2) - delta
    global BACKWARD_PATH
    with torch.enable_grad():
        qd, kd, vd = (x.detach().requires_grad_(True) for x in (q, k, v))
        o, l = _run(qd, kd, vd, counts, indices, kv_lengths, block_size, seq_len, scale)
        if not o.requires_grad:  # the compiled call did not record autograd here: use eager FlexAttention
            from torch.nn.attention.flex_attention import flex_attention

            BACKWARD_PATH = "eager"
            mask = _block_mask(counts, indices, kv_lengths, block_size, seq_len, q.shape[0], q.device)
            o, l = flex_attention(*(x.transpose(1, 2) for x in (qd, kd, vd)), block_mask=mask, scale=scale,
                                  return_lse=True)
            o = o.transpose(1, 2)
        grads = torch.autograd.grad((o, l), (qd, kd, vd), (grad_out.to(o.dtype), grad_lse), allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g.contiguous() for g, x in zip(grads, (q, k, v)))
