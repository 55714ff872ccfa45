"""Radial attention on the transformers of the released checkpoints (their hub configs, shrunk in depth and width:
``real_configs``), one forward call each, float32 on CPU:

- installed with every layer dense, the output equals the stock processors' exactly;
- sparse (block 16, no dense layer or step), every attention module runs sparse, the output is finite and equals the
  stock model's with each self-attention SDPA call restricted to the radial token mask (the reference), while it
  differs from the unmasked stock output;
- the latent token grid and text length radial attention reads from the call are the ones the config implies.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import radial_diffusers as rd
from radial_diffusers.families import family_of
from real_configs import CASES, REAL, build_fn


def _sample(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "sample", output)


def _masked_self_attention(token_mask: torch.Tensor, video_tokens: int, calls: list):
    """``F.scaled_dot_product_attention`` restricted to ``token_mask`` on the self-attention calls over the joint
    sequence (query and key lengths equal, at least the video tokens; the leading corner of the mask: Mochi's stock
    processor attends per sample over the video and that sample's valid text, a prefix of the layout's sequence).
    Cross-attention and the text refiner's calls are left alone."""
    sdpa = F.scaled_dot_product_attention
    seq = token_mask.shape[0]

    def masked(query, key, value, attn_mask=None, **kwargs):
        lq, lk = query.shape[-2], key.shape[-2]
        if lq == lk and video_tokens <= lk <= seq:
            radial = token_mask[:lq, :lk].to(query.device)
            assert attn_mask is None or attn_mask.dtype == torch.bool, "a float mask on a self-attention call"
            calls.append((lq, lk))
            attn_mask = radial if attn_mask is None else attn_mask & radial
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    return masked


@pytest.mark.parametrize("case", list(CASES))
def test_released_config(case, monkeypatch):
    key, make_inputs, ((frames, height, width), text_tokens) = CASES[case]
    torch.manual_seed(0)
    model = build_fn(key)().eval()
    family = family_of(model)
    modules = family.attention_modules(model)
    inputs = make_inputs(model)
    with torch.no_grad():
        stock = _sample(model(**inputs, return_dict=False)).clone()

    rd.apply_radial_attention(model, rd.RadialConfig(dense_layers=999, dense_steps=0, block_size=16))
    try:
        with torch.no_grad():
            all_dense = _sample(model(**inputs, return_dict=False))
    finally:
        rd.remove_radial_attention(model)
    assert torch.equal(all_dense, stock), f"{REAL[key][0]}: all-dense radial differs from stock"

    state = rd.apply_radial_attention(model, rd.RadialConfig(dense_layers=0, dense_steps=0, block_size=16))
    try:
        with torch.no_grad():
            sparse = _sample(model(**inputs, return_dict=False)).clone()
    finally:
        rd.remove_radial_attention(model)
    assert tuple(state.geometry) == (frames, height, width) and state.text_tokens == text_tokens
    assert state.layout.seq_len == frames * height * width + text_tokens
    assert state.layout.density < 1 and set(state.sparse_calls) == {i for i, _ in modules}
    assert torch.isfinite(sparse).all()

    calls: list = []
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        _masked_self_attention(state.layout.token_mask(), frames * height * width, calls))
    with torch.no_grad():
        reference = _sample(model(**inputs, return_dict=False))
    monkeypatch.undo()
    assert calls, "no self-attention call took the reference mask"
    scale = reference.abs().max()
    assert (sparse - reference).abs().max() <= 1e-4 * scale
    assert (sparse - stock).abs().max() > 1e-3 * scale  # the mask changed the output: the comparison can fail
