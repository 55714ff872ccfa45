"""LTX-2: radial attention on the video self-attention of both block kinds (LTX-2's, and LTX-2.3's perturbed and
gated ones), with spatio-temporal guidance, against the stock processors restricted to the radial token mask (CPU).

The registry-wide tests (test_families.py, test_integration.py, test_quant.py, ...) cover the tiny LTX-2 pipelines
as built; here the transformer is called directly with the arguments its pipeline passed.
"""

from __future__ import annotations

import pytest
import torch

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from tiny_calls import stock_and_radial
from radial_diffusers.tiny import default_call_kwargs, tiny_ltx2_pipeline

FRAMES, SIDE = 33, 32  # 9 x 8 x 8 latent tokens at the tiny VAE's x4 / x4
SPARSE = rd.RadialConfig(num_inference_steps=1, dense_steps=0, dense_layers=0, block_size=16)


def _transformer_call(rope_type: str, **blocks):
    """The tiny transformer of ``blocks`` (``LTX2VideoTransformer3DModel`` arguments) and the keyword arguments its
    pipeline passed it in a batch-2 CFG call (the first step)."""
    pipe = tiny_ltx2_pipeline(seed=0, rope_type=rope_type, **blocks)
    pipe.set_progress_bar_config(disable=True)
    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("kwargs", dict(kwargs))

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        pipe("a cat dancing on the beach", negative_prompt="blurry", num_frames=FRAMES, height=SIDE, width=SIDE,
             num_inference_steps=1, guidance_scale=3.0, stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
             audio_modality_scale=1.0, output_type="latent",
             generator=torch.Generator().manual_seed(0), **{**default_call_kwargs("tiny-ltx2"),
                                                            "spatio_temporal_guidance_blocks": None})
    handle.remove()
    kwargs = seen["kwargs"]
    assert kwargs["hidden_states"].shape[0] == 2 and kwargs["num_frames"] * kwargs["height"] * kwargs["width"] == \
        kwargs["hidden_states"].shape[1]
    return pipe.transformer, {**kwargs, "return_dict": False}


def _radial_and_reference(transformer, kwargs):
    """The video output of the radial transformer and of the stock one whose SDPA self-attention calls over the
    video see the radial token mask; and the radial state."""
    with torch.no_grad():
        state = rd.apply_radial_attention(transformer, SPARSE)
        try:
            got = transformer(**kwargs)[0]
        finally:
            rd.remove_radial_attention(transformer)
        seq = kwargs["hidden_states"].shape[1]
        with sdpa_restricted_to(state.layout.token_mask(), self_attention_from=seq):
            want = transformer(**kwargs)[0]
        stock = transformer(**kwargs)[0]
    return got, want, stock, state


@pytest.mark.parametrize("rope_type", ["split", "interleaved"])
@pytest.mark.parametrize("blocks", [{}, {"perturbed_attn": True, "gated_attn": True}], ids=["ltx2", "ltx2.3-blocks"])
def test_sparse_video_self_attention_equals_stock_with_the_token_mask(rope_type, blocks):
    transformer, kwargs = _transformer_call(rope_type, **blocks)
    if blocks:  # a non-zero gate: the gated path is exercised, not the identity of zero-initialised logits
        for block in transformer.transformer_blocks:
            torch.nn.init.normal_(block.attn1.to_gate_logits.weight, std=0.5)
    got, want, stock, state = _radial_and_reference(transformer, kwargs)
    assert state.layout.density < 0.8 and sum(state.sparse_calls.values()) == 2  # 2 blocks, one call each
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, stock, atol=1e-4)  # the mask changed the computation


def test_spatio_temporal_guidance_blends_per_sample_and_skips_wholly_perturbed_blocks():
    """LTX-2.3's blocks under spatio-temporal guidance on block 1: sample 0 attends (radial), sample 1 is perturbed
    (its output is the value projection), as the stock processor blends them; a wholly perturbed block computes no
    attention (the stock call, counted dense)."""
    transformer, kwargs = _transformer_call("split", perturbed_attn=True, gated_attn=True)
    mixed = dict(kwargs, spatio_temporal_guidance_blocks=[1], perturbation_mask=torch.tensor([1.0, 0.0]))
    got, want, _, state = _radial_and_reference(transformer, mixed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert dict(state.sparse_calls) == {0: 1, 1: 1}

    every = dict(kwargs, spatio_temporal_guidance_blocks=[1])  # no mask: every sample perturbed
    got, want, _, state = _radial_and_reference(transformer, every)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert dict(state.sparse_calls) == {0: 1} and dict(state.dense_calls) == {1: 1}


def test_a_video_self_attention_mask_runs_the_stock_attention():
    """The IC-LoRA / HDR pipelines pass a self-attention mask over the video (and their reference tokens): radial
    attention cannot honour an arbitrary mask, so such a call is the stock one, exactly."""
    transformer, kwargs = _transformer_call("split")
    seq = kwargs["hidden_states"].shape[1]
    gen = torch.Generator().manual_seed(5)
    masked = dict(kwargs, video_self_attention_mask=(torch.rand(2, seq, seq, generator=gen) > 0.3).float())
    with torch.no_grad():
        stock = transformer(**masked)[0]
        state = rd.apply_radial_attention(transformer, SPARSE)
        try:
            got = transformer(**masked)[0]
        finally:
            rd.remove_radial_attention(transformer)
    assert torch.equal(got, stock)
    assert sum(state.sparse_calls.values()) == 0 and sum(state.dense_calls.values()) == 2


def test_tokens_beyond_the_grid_run_the_stock_attention_with_a_warning():
    """The condition pipeline appends keyframe tokens (and their coordinates) after the video grid: they cannot be
    placed in the mask, so the call runs the stock attention (one warning)."""
    transformer, kwargs = _transformer_call("split")
    extra = 8
    hidden, coords = kwargs["hidden_states"], kwargs["video_coords"]
    longer = dict(kwargs, hidden_states=torch.cat([hidden, hidden[:, :extra]], dim=1),
                  video_coords=torch.cat([coords, coords[:, :, :extra]], dim=2))
    with torch.no_grad():
        stock = transformer(**longer)[0]
        state = rd.apply_radial_attention(transformer, SPARSE)
        try:
            with pytest.warns(UserWarning, match="without the latent grid"):
                got = transformer(**longer)[0]
        finally:
            rd.remove_radial_attention(transformer)
    assert torch.equal(got, stock) and sum(state.sparse_calls.values()) == 0


def test_pipeline_defaults_run_sparse_in_every_guidance_pass():
    """The pipeline's own guidance (CFG, spatio-temporal guidance and modality isolation: three transformer calls a
    step) on LTX-2.3's blocks: every pass of a sparse step is sparse in the sparse layers, steps follow the
    scheduler, and the video differs from the stock one."""
    pipe = tiny_ltx2_pipeline(seed=0, perturbed_attn=True)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat dancing", num_frames=FRAMES, height=SIDE, width=SIDE, num_inference_steps=4,
                  output_type="latent", **default_call_kwargs("tiny-ltx2"))
    stock, got, state = stock_and_radial(pipe, kwargs, rd.RadialConfig(dense_steps=1, dense_layers=1, block_size=16))
    # 3 sparse steps x 3 passes in layer 1 (spatio-temporal guidance perturbs the whole batch of its pass there:
    # that pass is the stock call); layer 0 is dense
    assert state.step == 3 and dict(state.sparse_calls) == {1: 6}
    assert dict(state.dense_calls) == {0: 12, 1: 6}
    assert got.shape == stock.shape and torch.isfinite(got).all() and not torch.equal(got, stock)
