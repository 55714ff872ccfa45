"""Kandinsky 5: radial attention on the visual blocks' self-attention, over raster-ordered tokens (the 5-second Lite
checkpoints) and over the 8 x 8 tiles of the NABLA checkpoints (Pro, 10-second Lite), against the stock processors
restricted to the radial token mask (CPU).

The registry-wide tests (test_families.py, test_integration.py, test_quant.py, ...) cover the tiny Kandinsky 5
pipelines as built; here the transformer is called directly with the arguments its pipeline passed.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import transformer_kandinsky

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from tiny_calls import first_transformer_call, stock_and_radial
from radial_diffusers.families import get_family
from radial_diffusers.processors import RadialKandinsky5AttnProcessor
from radial_diffusers.tiny import default_call_kwargs, tiny_kandinsky5_pipeline

SPARSE = rd.RadialConfig(num_inference_steps=1, dense_steps=0, dense_layers=0, block_size=16)
# the NABLA settings of the released 10-second Lite / Pro configs (P 0.9 / 0.8)
NABLA = dict(attention_type="nabla", attention_causal=False, attention_local=False, attention_glob=False,
             attention_window=3, attention_P=0.9, attention_wT=11, attention_wW=3, attention_wH=3,
             attention_add_sta=True, attention_method="topcdf")


def _first_call(pipe, **call) -> dict:
    """The keyword arguments ``pipe(**call)`` passes its transformer first (output_type "latent", seed 0); the run
    stops there: the stock NABLA path needs flex attention on a GPU."""
    return first_transformer_call(pipe, **default_call_kwargs("tiny-kandinsky5"), **call)


def _transformer_call(side: int = 128, frames: int = 17, **overrides):
    """The tiny transformer (``Kandinsky5Transformer3DModel`` ``overrides``) and the keyword arguments its pipeline
    passed it for a batch of two prompts (the first call of the first step). ``side`` 256: 16 x 16 tokens a frame,
    four 8 x 8 tiles."""
    pipe = tiny_kandinsky5_pipeline(seed=0, **overrides)
    kwargs = _first_call(pipe, prompt=["a cat dancing on the beach", "a red car in the city at night"],
                         num_frames=frames, height=side, width=side, num_inference_steps=1)
    assert kwargs["hidden_states"].shape[0] == 2 and kwargs["hidden_states"].shape[-1] == 9  # 4 + 4 + mask
    # return_dict=True: with False, Kandinsky5Transformer3DModel returns the output tensor itself (no tuple)
    return pipe.transformer, {**kwargs, "return_dict": True}


def _radial_and_reference(transformer, kwargs, monkeypatch):
    """The output of the radial transformer, of the stock one whose SDPA self-attention calls over the video see the
    radial token mask (NABLA's own mask switched off: radial attention replaces it), and of the stock one; and the
    radial state."""
    with torch.no_grad():
        state = rd.apply_radial_attention(transformer, SPARSE)
        try:
            got = transformer(**kwargs).sample
        finally:
            rd.remove_radial_attention(transformer)
        stock = transformer(**kwargs).sample if kwargs["sparse_params"] is None else None
        monkeypatch.setattr(transformer_kandinsky, "nablaT_v2", lambda *args, **kwargs: None)
        seq = state.layout.seq_len
        calls = []
        with sdpa_restricted_to(state.layout.token_mask(), self_attention_from=seq, calls=calls):
            want = transformer(**kwargs).sample
        assert calls == [(seq, seq)] * len(transformer.visual_transformer_blocks)  # the text blocks' are shorter
    return got, want, stock, state


def _assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to 1e-4 of the output's scale. Not closer: Kandinsky's RoPE rounds q and k through bfloat16 (also in a
    float32 model), so the float-order noise of two attention kernels (~1e-7) flips a few roundings in the next
    block (measured up to 6e-5 on a few of 37k elements)."""
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)


def test_sparse_video_self_attention_equals_stock_with_the_token_mask(monkeypatch):
    transformer, kwargs = _transformer_call()
    assert kwargs["sparse_params"] is None
    got, want, stock, state = _radial_and_reference(transformer, kwargs, monkeypatch)
    assert state.geometry == (5, 8, 8) and state.layout.density < 0.8
    assert dict(state.sparse_calls) == {0: 1, 1: 1} and sum(state.dense_calls.values()) == 0
    _assert_matches(got, want)
    assert (got - stock).abs().max() > 100 * (got - want).abs().max()  # the mask changed the computation


def test_nabla_checkpoints_run_radial_over_their_tiled_token_order(monkeypatch):
    """NABLA configs: the pipeline passes ``sparse_params`` and the transformer orders each frame's tokens in 8 x 8
    tiles. Radial attention replaces NABLA and its mask applies to that order: equal to the stock transformer
    (tiled order) restricted to the radial token mask, with NABLA's mask off."""
    transformer, kwargs = _transformer_call(side=256, frames=33, **NABLA)
    assert kwargs["sparse_params"]["to_fractal"] and kwargs["sparse_params"]["visual_shape"] == (9, 16, 16)
    got, want, _, state = _radial_and_reference(transformer, kwargs, monkeypatch)
    assert state.geometry == (9, 16, 16) and state.layout.density < 0.8
    _assert_matches(got, want)


def test_dense_calls_of_a_nabla_checkpoint_are_full_attention(monkeypatch):
    """A dense step under radial attention is full attention, not NABLA (whose mask the stock processor would build):
    equal to the stock transformer with NABLA's mask switched off; the cross-attention is untouched."""
    transformer, kwargs = _transformer_call(side=256, **NABLA)
    with torch.no_grad():
        rd.apply_radial_attention(transformer, rd.RadialConfig(num_inference_steps=1, dense_steps=1, block_size=16))
        built = []

        def nabla(*args, **kw):  # NABLA builds a flex-attention BlockMask: never asked for under radial attention
            built.append(1)
            raise AssertionError("NABLA ran")

        monkeypatch.setattr(transformer_kandinsky, "nablaT_v2", nabla)
        try:
            with pytest.warns(UserWarning, match="every step runs dense attention"):
                got = transformer(**kwargs).sample
        finally:
            rd.remove_radial_attention(transformer)
        monkeypatch.setattr(transformer_kandinsky, "nablaT_v2", lambda *args, **kw: None)
        want = transformer(**kwargs).sample
    assert not built
    assert torch.equal(got, want)


def test_only_the_visual_self_attention_gets_radial_processors():
    pipe = tiny_kandinsky5_pipeline(seed=0)
    rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16))
    transformer = pipe.transformer
    for block in transformer.visual_transformer_blocks:
        assert isinstance(block.self_attention.processor, RadialKandinsky5AttnProcessor)
        assert not isinstance(block.cross_attention.processor, RadialKandinsky5AttnProcessor)
    for block in transformer.text_transformer_blocks:
        assert not isinstance(block.self_attention.processor, RadialKandinsky5AttnProcessor)
    rd.remove_radial_attention(pipe)
    assert not any(isinstance(m.processor, RadialKandinsky5AttnProcessor)
                   for m in transformer.modules() if hasattr(m, "processor"))


def test_the_channels_last_latent_gives_the_grid():
    """``(B, F, H, W, C)``: the grid is read from dims 1-3, whatever the channels (noise + condition + mask)."""
    transformer, kwargs = _transformer_call()
    info = get_family("kandinsky5").read_call(transformer, (), kwargs)
    assert info.latent_grid == (5, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, F, H, W, C\)"):
        get_family("kandinsky5").read_call(transformer, (), dict(kwargs, hidden_states=kwargs["hidden_states"][0]))


def test_pipeline_steps_are_sparse_in_both_guidance_calls():
    """The pipeline calls the transformer twice a step (the prompt, then the negative prompt): both calls of a
    sparse step are sparse in the sparse layers, and the steps follow the scheduler."""
    pipe = tiny_kandinsky5_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat dancing", num_frames=17, height=128, width=128, num_inference_steps=4,
                  output_type="latent", **default_call_kwargs("tiny-kandinsky5"))
    stock, got, state = stock_and_radial(pipe, kwargs, rd.RadialConfig(dense_steps=1, dense_layers=1, block_size=16))
    assert state.step == 3 and dict(state.sparse_calls) == {1: 6} and dict(state.dense_calls) == {0: 8, 1: 2}
    assert got.shape == stock.shape and torch.isfinite(got).all() and not torch.equal(got, stock)


@pytest.mark.parametrize("overrides, i2v", [({}, False), (NABLA, False), ({}, True)], ids=["regular", "nabla", "i2v"])
def test_the_training_step_calls_the_transformer_as_the_pipeline_does(overrides, i2v):
    """The LoRA training adapter's transformer call on the pipeline's own latent, timestep and text equals the
    pipeline's call: channels-last latents with the zero condition and mask, the RoPE positions, the resolution's RoPE
    scale, ``sparse_params`` (NABLA's tiled order), the unpadded Qwen text and the CLIP pooled text; image-to-video:
    the clean image latent as frame 0, whatever the noisy one holds there, the mask 1 on it, and the loss weight 0
    there (the pipeline never updates that frame)."""
    import PIL.Image

    from radial_diffusers.tiny import tiny_kandinsky5_i2v_pipeline
    from radial_diffusers.training_adapters import TrainingAdapter, TrainingOptions

    frames, side = 17, 256
    pipe = (tiny_kandinsky5_i2v_pipeline if i2v else tiny_kandinsky5_pipeline)(seed=0, **overrides)
    image = {"image": PIL.Image.new("RGB", (side, side), "orange")} if i2v else {}
    call = _first_call(pipe, prompt="a cat dancing on the beach", num_frames=frames, height=side, width=side,
                       num_inference_steps=2, guidance_scale=1.0, **image)
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=frames, height=side, width=side))
    text = adapter.encode_text("a cat dancing on the beach", default_call_kwargs("tiny-kandinsky5"), "cpu")
    assert text["prompt_embeds"].shape[0] == 32 and 0 < int(text["prompt_mask"].sum()) < 32
    channels = pipe.transformer.config.in_visual_dim
    noisy = call["hidden_states"][..., :channels].permute(0, 4, 1, 2, 3)  # the cache's (B, C, F, H, W)
    batch = {"latents": noisy, **{k: v[None] for k, v in text.items()}}
    if i2v:
        condition = adapter.encode_condition(torch.full((frames, side, side, 3), 200, dtype=torch.uint8), "cpu")
        assert condition["condition"].shape == (channels, 1, side // 8, side // 8)
        assert condition["loss_weight"].flatten().tolist() == [0.0] + [1.0] * 4
        batch["condition"] = noisy[:, :, :1].clone()  # the pipeline's image latent (a VAE sample: ours is the mode)
        noisy = torch.cat([torch.randn_like(noisy[:, :, :1]), noisy[:, :, 1:]], dim=2)  # replaced by the condition
    torch.testing.assert_close(batch["prompt_embeds"][:, : int(text["prompt_mask"].sum())],
                               call["encoder_hidden_states"], rtol=0, atol=0)
    with torch.no_grad():
        rd.apply_radial_attention(pipe.transformer, SPARSE)  # NABLA's stock path needs a GPU: compare under radial
        try:
            got = adapter.predict(pipe.transformer, noisy, call["timestep"], batch, "cpu", torch.float32)
            want = pipe.transformer(**{**call, "return_dict": True}).sample.permute(0, 4, 1, 2, 3)
        finally:
            rd.remove_radial_attention(pipe.transformer)
    assert torch.equal(got, want)


def test_context_parallel_plan_and_its_training_guard():
    """The plan splits the video at the first visual block, the RoPE table at every self-attention, and gathers after
    the last block (tests/test_parallel.py runs it on two processes); a single visual block (split and gather on one
    module) is refused. Sequence-parallel LoRA training refuses targets after the gather (their gradients are whole
    on every rank), and accepts the default ones."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    from lora_training import ConfigError
    from lora_training.train import _check_sequence_parallel_targets
    from radial_diffusers.errors import UnsupportedModelError
    from radial_diffusers.parallel import kandinsky5_plan

    transformer = tiny_kandinsky5_pipeline(seed=0).transformer
    plan = kandinsky5_plan(transformer)
    assert set(plan) == {"visual_transformer_blocks.0", "visual_transformer_blocks.0.self_attention",
                         "visual_transformer_blocks.1.self_attention", "visual_transformer_blocks.1"}
    assert isinstance(plan["visual_transformer_blocks.0"]["visual_embed"], ContextParallelInput)
    assert isinstance(plan["visual_transformer_blocks.1"], ContextParallelOutput)
    one = tiny_kandinsky5_pipeline(seed=0, num_visual_blocks=1).transformer
    with pytest.raises(UnsupportedModelError, match="1 visual block.*run it on one process"):
        kandinsky5_plan(one)

    family = get_family("kandinsky5")
    _check_sequence_parallel_targets(transformer, family.lora_targets, family)
    for targets in (r"out_layer\.out_layer", ["modulation.out_layer"], "all-linear"):
        with pytest.raises(ConfigError, match=r"under sequence_parallel, Kandinsky 5.0 Video's \w*(out_layer|embed)"
                                              r".*whole-sequence gradients"):
            _check_sequence_parallel_targets(transformer, targets, family)


def test_a_removed_processor_is_the_stock_one_again_nabla_included(monkeypatch):
    """After remove_radial_attention a radial processor still installed somewhere (set back by the user) is the
    stock one: a NABLA checkpoint's self-attention builds NABLA's mask again."""
    transformer, kwargs = _transformer_call(side=256, frames=33, **NABLA)
    rd.apply_radial_attention(transformer, SPARSE)
    kept = dict(transformer.attn_processors)
    rd.remove_radial_attention(transformer)
    transformer.set_attn_processor(kept)
    built = []
    monkeypatch.setattr(transformer_kandinsky, "nablaT_v2", lambda *args, **kw: built.append(1))  # returns None
    with torch.no_grad():
        transformer(**kwargs)
    assert len(built) == len(transformer.visual_transformer_blocks)


def test_the_pipelines_own_size_and_length_rules():
    """NABLA checkpoints need whole 8 x 8 tiles of tokens (multiples of 128 pixels); the image-to-video pipeline
    needs 17 frames or more (its first-frame normalisation; with fewer its video is NaN): both named before a call."""
    from radial_diffusers.pipelines import geometry_problem
    from radial_diffusers.tiny import tiny_kandinsky5_i2v_pipeline

    assert geometry_problem(tiny_kandinsky5_pipeline(seed=0), 17, 192, 192) is None
    nabla = tiny_kandinsky5_pipeline(seed=0, **NABLA)
    assert geometry_problem(nabla, 17, 192, 192) == (
        1, "Kandinsky5T2VPipeline needs multiples of 128 (VAE 8x, patch 2, tiles of 8x8 tokens); use 128 or 256")
    assert geometry_problem(nabla, 17, 256, 384) is None
    i2v = tiny_kandinsky5_i2v_pipeline(seed=0)
    which, why = geometry_problem(i2v, 13, 64, 64)
    assert which == 0 and why.startswith("Kandinsky5I2VPipeline needs at least 17 frames")
    assert geometry_problem(i2v, 17, 64, 64) is None
