"""HunyuanVideo-1.5: what is specific to its joint attention (the registry-wide tests cover the rest).

* The joint text is three arguments (Qwen, ByT5 and image tokens) whose lengths add up: the hook reads all three.
* The transformer reorders each sample's text as [valid image, valid ByT5, valid Qwen, padding] and the stock
  processor masks query *and* key, so a padded text row attends to nothing: SDPA returns zeros there, and so must
  the radial processor (per-sample key lengths for the valid rows, zeros for the padded ones).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from radial_diffusers.families import ForwardArgs, get_family
from radial_diffusers.processors import RadialHunyuanVideo15AttnProcessor
from radial_diffusers.tiny import (
    HUNYUAN15_GLYPH_TOKENS,
    HUNYUAN15_IMAGE_TOKENS,
    HUNYUAN15_TEXT_TOKENS,
    load_tiny,
)

TEXT = HUNYUAN15_TEXT_TOKENS + HUNYUAN15_GLYPH_TOKENS + HUNYUAN15_IMAGE_TOKENS  # the tiny joint text length


@pytest.fixture(scope="module")
def pipe():
    return load_tiny("tiny-hunyuan1.5", seed=0)


def _inputs(transformer, valid_text=(5, 11), valid_glyph=(0, 3), batch=2, frames=5, seed=0):
    """A transformer call with per-sample valid Qwen / ByT5 lengths (T2V: the image tokens are all padding)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    arange = torch.arange(max(HUNYUAN15_TEXT_TOKENS, HUNYUAN15_GLYPH_TOKENS))
    return dict(
        hidden_states=torch.randn(batch, cfg.in_channels, frames, 8, 8, generator=gen),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, HUNYUAN15_TEXT_TOKENS, cfg.text_embed_dim, generator=gen),
        encoder_attention_mask=(arange[:HUNYUAN15_TEXT_TOKENS] < torch.tensor(valid_text)[:, None]).long(),
        encoder_hidden_states_2=torch.randn(batch, HUNYUAN15_GLYPH_TOKENS, cfg.text_embed_2_dim, generator=gen),
        encoder_attention_mask_2=(arange[:HUNYUAN15_GLYPH_TOKENS] < torch.tensor(valid_glyph)[:, None]).long(),
        image_embeds=torch.zeros(batch, HUNYUAN15_IMAGE_TOKENS, cfg.image_embed_dim),
    )


def _first_call(t, attn) -> dict:
    """The keyword arguments of ``attn``'s first call (the block passes them all by name) in a forward of ``t``."""
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, k: seen.setdefault("call", dict(k)) and None,
                                          with_kwargs=True)
    try:
        with torch.no_grad():
            t(**_inputs(t))
    finally:
        hook.remove()
    return seen["call"]


def test_text_length_adds_every_text_argument(pipe):
    family = get_family("hunyuan1.5")
    t = pipe.transformer
    assert family.forward.text_names() == ("encoder_hidden_states", "encoder_hidden_states_2", "image_embeds")
    assert set(family.forward.text_names()) <= set(family.forward.names())
    family.check_forward(t)
    call = _inputs(t)
    kw = family.read_call(t, (), call)
    order = ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    pos = family.read_call(t, tuple(call[n] for n in order), {k: v for k, v in call.items() if k not in order})
    assert kw.text_tokens == pos.text_tokens == TEXT and kw.latent_grid == pos.latent_grid == (5, 8, 8)
    assert family.read_call(t, (), {**call, "image_embeds": None}).text_tokens == TEXT - HUNYUAN15_IMAGE_TOKENS
    # the one-name form is unchanged
    single = ForwardArgs(text="encoder_hidden_states")
    assert single.text_names() == ("encoder_hidden_states",) and single.names()[-1] == "encoder_hidden_states"
    assert ForwardArgs().text_names() == () and get_family("hunyuan").forward.text_names() == ("encoder_hidden_states",)


@pytest.mark.parametrize("layer", [0, 1])
def test_padded_text_rows_and_per_sample_lengths_equal_stock(pipe, layer):
    """One block, batch 2 with different valid text per sample (5 Qwen + 0 ByT5 tokens vs 11 + 3): the radial
    processor equals the stock one run with the radial token mask, and the padded text rows get exactly what stock
    gives them (a zero attention output, i.e. ``to_add_out``'s bias)."""
    t = pipe.transformer
    attn = t.transformer_blocks[layer].attn
    state = rd.apply_radial_attention(t, rd.RadialConfig(dense_steps=0, dense_layers=0, block_size=16))
    try:
        call = _first_call(t, attn)
        mask = call["attention_mask"]
        assert mask.dtype == torch.bool and mask.shape == (2, TEXT)
        assert mask.sum(-1).tolist() == [5, 14]  # each sample's valid text first
        assert isinstance(attn.processor, RadialHunyuanVideo15AttnProcessor) and attn.processor.use_sparse
        with torch.no_grad():
            ours = attn.processor(attn, **call)
            with sdpa_restricted_to(state.layout.token_mask()):
                stock = HunyuanVideo15AttnProcessor2_0()(attn, **call)
    finally:
        rd.remove_radial_attention(t)
    assert state.text_tokens == TEXT and state.layout.density < 0.6
    for a, b in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    text_out = ours[1]
    bias = attn.to_add_out.bias
    for sample, valid in enumerate((5, 14)):
        assert torch.equal(text_out[sample, valid:], bias.expand(TEXT - valid, -1))  # padded rows: exactly stock's
        assert torch.equal(stock[1][sample, valid:], text_out[sample, valid:])
        assert not torch.allclose(text_out[sample, :valid], bias.expand(valid, -1))


def test_stock_sdpa_gives_zeros_for_a_row_with_no_valid_key():
    """What the radial processor reproduces: SDPA (and Diffusers' native backend) on a fully masked query row."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    valid = torch.tensor([[True] * 4 + [False] * 2])
    mask = valid[:, None, :, None] & valid[:, None, None, :]
    out = dispatch_attention_fn(q, k, v, attn_mask=mask)
    assert torch.equal(out[0, 4:], torch.zeros(2, 2, 8)) and torch.isfinite(out).all()


def test_batch2_cfg_pipeline_with_different_text_lengths(pipe):
    """A pipeline call with two prompts of different lengths (one with glyph text, so ByT5 tokens too) under the
    tiny's classifier-free guidance (two transformer calls per step, batch 2 each): at the first sparse step the
    first block equals stock with the radial token mask; removing restores stock output exactly."""
    prompts = ["a cat", 'a red car on the street at night with the sign "open" in the rain']
    kwargs = dict(num_frames=17, height=128, width=128, num_inference_steps=2, output_type="latent")

    def run():
        with torch.no_grad():
            return pipe(prompt=prompts, negative_prompt=["blurry", "low quality"],
                        generator=torch.Generator().manual_seed(0), **kwargs).frames

    assert pipe.guider.guidance_scale > 1 and pipe.guider._enabled
    stock = run()
    attn = pipe.transformer.transformer_blocks[0].attn
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, block_size=16))
    calls = []
    hook = attn.register_forward_hook(
        lambda m, a, k, out: calls.append((dict(k), out, m.processor.use_sparse)), with_kwargs=True)
    try:
        sparse = run()
    finally:
        hook.remove()
    try:
        assert [use for _, _, use in calls] == [False, False, True, True]  # step 0 dense (cond, uncond), 1 sparse
        call, out, _ = calls[2]
        lengths = call["attention_mask"].sum(-1).tolist()
        assert len(set(lengths)) == 2 and min(lengths) < TEXT  # per-sample lengths, with padding
        assert call["encoder_hidden_states"].shape[:2] == (2, TEXT)
        with torch.no_grad():
            with sdpa_restricted_to(state.layout.token_mask()):
                want = HunyuanVideo15AttnProcessor2_0()(attn, **call)
        for got, ref in zip(out, want, strict=True):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    finally:
        rd.remove_radial_attention(pipe)
    assert state.geometry == (5, 8, 8) and state.text_tokens == TEXT
    assert torch.isfinite(sparse).all() and not torch.equal(sparse, stock)
    assert torch.equal(run(), stock)
    assert type(attn.processor) is HunyuanVideo15AttnProcessor2_0
    refiner = pipe.transformer.context_embedder.token_refiner.refiner_blocks[0].attn
    assert not isinstance(refiner.processor, RadialHunyuanVideo15AttnProcessor)


def test_text_mask_that_is_not_a_prefix_is_refused(pipe):
    t = pipe.transformer
    attn = t.transformer_blocks[0].attn
    rd.apply_radial_attention(t, rd.RadialConfig(dense_steps=0, block_size=16))
    try:
        call = _first_call(t, attn)
        holes = call["attention_mask"].clone()
        holes[:, 0] = False  # a padded token before valid ones
        with pytest.raises(ValueError, match="valid text tokens first"), torch.no_grad():
            attn.processor(attn, **{**call, "attention_mask": holes})
    finally:
        rd.remove_radial_attention(t)


def test_regional_compile_matches_eager_and_stock():
    """compile_repeated_blocks(fullgraph=True): the dense step is the stock branch of torch.cond (equal to stock
    output), the sparse steps the radial branch (equal to eager radial), all in one graph per block class."""
    from torch._dynamo.testing import CompileCounterWithBackend

    t = load_tiny("tiny-hunyuan1.5", seed=0).transformer
    call = _inputs(t, batch=2)
    call.pop("timestep")

    def steps(model):
        with torch.no_grad():
            return [model(timestep=torch.full((2,), s), return_dict=False, **call)[0] for s in (999.0, 700.0, 400.0)]

    torch._dynamo.reset()
    try:
        stock = steps(t)
        state = rd.apply_radial_attention(t, rd.RadialConfig(block_size=16, dense_steps=1, dense_layers=1))
        eager = steps(t)
        assert state.dense_calls[0] == 3 and state.sparse_calls[1] == 2
        assert torch.equal(eager[0], stock[0]) and not torch.allclose(eager[1], stock[1])
        counter = CompileCounterWithBackend("aot_eager")
        t.compile_repeated_blocks(fullgraph=True, backend=counter)
        with torch._dynamo.config.patch(recompile_limit=1):
            compiled = steps(t)
        assert counter.frame_count == 3  # dual blocks, the untouched token refiner, the patch embedding
        torch.testing.assert_close(compiled[0], stock[0], rtol=1e-6, atol=1e-6)
        for got, want in zip(compiled, eager):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()
