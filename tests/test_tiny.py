"""Tests for ``radial_diffusers.tiny``: offline tiny random Wan / HunyuanVideo pipelines."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from radial_diffusers.families import random_tiny_models
from radial_diffusers.tiny import (
    HUNYUAN_PROMPT_TEMPLATE,
    TINY_MODELS,
    WAN_ROPE_MAX_SEQ_LEN,
    default_call_kwargs,
    load_tiny,
    tiny_hunyuan_pipeline,
    tiny_wan22_pipeline,
    tiny_wan_i2v_pipeline,
    tiny_wan_pipeline,
)

PROMPT = "a cat dancing on the beach at sunset, red sky"
NEGATIVE = "blurry, low quality"


def _state_dicts(pipe) -> dict[str, dict[str, torch.Tensor]]:
    """The state of every component with weights (the tiny Cosmos pipelines' pass-through guardrail has none)."""
    return {
        name: module.state_dict()
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module) and any(True for _ in module.parameters())
    }


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", sorted(random_tiny_models()))
def test_build_is_deterministic(name):
    a, b, c = _state_dicts(load_tiny(name, seed=0)), _state_dicts(load_tiny(name, seed=0)), _state_dicts(
        load_tiny(name, seed=1)
    )
    assert a.keys() == b.keys() == c.keys()
    assert {"transformer", "vae", "text_encoder"} <= a.keys()
    for comp in a:
        assert a[comp].keys() == b[comp].keys()
        for key, tensor in a[comp].items():
            assert tensor.dtype == b[comp][key].dtype
            assert torch.equal(tensor, b[comp][key]), f"{name}.{comp}.{key} differs for the same seed"
        # Every random module must change with the seed (some tensors, e.g. norm weights, are constant).
        assert any(not torch.equal(t, c[comp][k]) for k, t in a[comp].items()), f"{name}.{comp} ignores the seed"


def test_build_is_fp32_eval_and_preserves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    pipe = load_tiny("tiny-hunyuan", seed=7)
    assert torch.equal(torch.rand(4), expected)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training, name
            assert all(p.dtype == torch.float32 for p in module.parameters()), name


def test_registry_and_bad_name():
    from radial_diffusers.families import tiny_models

    assert list(TINY_MODELS) == list(tiny_models())  # every registered family's tiny pipelines, from the registry
    assert {name: TINY_MODELS[name] for name in ("tiny-wan", "tiny-wan-i2v", "tiny-hunyuan", "tiny-wan2.2")} == {
        "tiny-wan": tiny_wan_pipeline,
        "tiny-wan-i2v": tiny_wan_i2v_pipeline,
        "tiny-hunyuan": tiny_hunyuan_pipeline,
        "tiny-wan2.2": tiny_wan22_pipeline,
    }
    for bad in (load_tiny, default_call_kwargs):
        with pytest.raises(ValueError) as err:
            bad("tiny-flux")
        msg = str(err.value)
        assert "tiny-flux" in msg
        for valid in TINY_MODELS:
            assert valid in msg


def test_default_call_kwargs():
    assert default_call_kwargs("tiny-wan") == {"max_sequence_length": 16}
    assert default_call_kwargs("tiny-wan-i2v") == {"max_sequence_length": 16}
    hy = default_call_kwargs("tiny-hunyuan")
    assert hy["prompt_template"] == HUNYUAN_PROMPT_TEMPLATE == {"template": "{}", "crop_start": 0}
    hy["prompt_template"]["crop_start"] = 5  # callers may mutate their copy
    assert HUNYUAN_PROMPT_TEMPLATE["crop_start"] == 0


def test_tokenizers_know_demo_words():
    wan = load_tiny("tiny-wan")
    ids = wan.tokenizer("A cat, dancing on the beach at sunset. Zebra").input_ids
    unk = wan.tokenizer.unk_token_id
    assert ids[-1] == wan.tokenizer.eos_token_id
    assert ids.count(unk) == 1  # only "zebra"
    words = "a cat dancing on the beach at sunset red sky city video dog running"
    assert unk not in wan.tokenizer(words).input_ids
    assert max(wan.tokenizer.get_vocab().values()) < wan.text_encoder.config.vocab_size
    hy = load_tiny("tiny-hunyuan")
    assert hy.tokenizer(words).input_ids[0] == hy.tokenizer.bos_token_id
    ids2 = hy.tokenizer_2(words).input_ids
    assert ids2[0] == hy.tokenizer_2.bos_token_id and ids2[-1] == hy.tokenizer_2.eos_token_id
    assert hy.tokenizer.unk_token_id not in hy.tokenizer(words).input_ids


def test_wan_t2v_cfg_batch():
    pipe = _quiet(tiny_wan_pipeline())
    out = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=5.0,
        num_videos_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **default_call_kwargs("tiny-wan"),
    ).frames
    assert out.shape == (2, 9, 32, 32, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out[0], out[1])  # different noise per video


def test_wan_long_video_rope():
    pipe = tiny_wan_pipeline()
    assert pipe.transformer.config.rope_max_seq_len == WAN_ROPE_MAX_SEQ_LEN >= 64
    # 64 x 64 x 64 post-patch tokens (only the shape of the input is read by the RoPE module).
    latent = torch.empty(1, 16, 64, 128, 128, device="meta")
    cos, sin = pipe.transformer.rope(latent)
    assert cos.shape == sin.shape == (1, 64 * 64 * 64, 1, 12)
    # A real 81-frame run at small resolution (21 latent frames).
    out = _quiet(pipe)(
        PROMPT, num_frames=81, height=32, width=32, num_inference_steps=1, output_type="latent",
        **default_call_kwargs("tiny-wan"),
    ).frames  # fmt: skip
    assert out.shape == (1, 16, 21, 4, 4)


def test_wan_i2v_runs():
    pipe = _quiet(tiny_wan_i2v_pipeline())
    rng = np.random.RandomState(0)
    image = PIL.Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    out = pipe(
        image,
        PROMPT,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **default_call_kwargs("tiny-wan-i2v"),
    ).frames
    assert out.shape == (1, 9, 32, 32, 3)
    assert np.isfinite(out).all()


def test_hunyuan_runs_with_template():
    pipe = _quiet(tiny_hunyuan_pipeline())
    out = pipe(
        PROMPT,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **default_call_kwargs("tiny-hunyuan"),
    ).frames
    assert out.shape == (1, 9, 32, 32, 3)
    assert np.isfinite(out).all()
    # Many frames: HunyuanVideo's RoPE is computed from the grid (161 frames -> 41 latent frames).
    lat = pipe(
        PROMPT, num_frames=161, height=16, width=16, num_inference_steps=1, output_type="latent",
        **default_call_kwargs("tiny-hunyuan"),
    ).frames  # fmt: skip
    assert lat.shape == (1, 4, 41, 2, 2)


def _run(pipe, name):
    return pipe(
        PROMPT,
        num_frames=9,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **default_call_kwargs(name),
    ).frames


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_save_load_round_trip(name, tmp_path):
    pipe = _quiet(load_tiny(name))
    expected = _run(pipe, name)
    pipe.save_pretrained(tmp_path)
    reloaded = _quiet(type(pipe).from_pretrained(tmp_path, local_files_only=True))
    assert type(reloaded) is type(pipe)
    if name == "tiny-wan":
        assert reloaded.transformer.config.rope_max_seq_len == WAN_ROPE_MAX_SEQ_LEN
    got = _run(reloaded, name)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_dtype_casts_like_from_pretrained(tmp_path):
    """load_tiny(dtype=bf16): Wan's _keep_in_fp32_modules (by full parameter name) stay float32, the rest is BF16;
    non-persistent buffers (not in a checkpoint) keep their dtype: Kandinsky 5's RoPE angle tables stay float32, as
    from_pretrained(torch_dtype=bf16) of the saved transformer gives every parameter and buffer."""
    import torch

    k = load_tiny("tiny-kandinsky5", seed=0, dtype=torch.bfloat16).transformer
    load_tiny("tiny-kandinsky5", seed=0).transformer.save_pretrained(tmp_path)
    loaded = type(k).from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    dtypes = [{n: t.dtype for n, t in [*m.named_parameters(), *m.named_buffers()]} for m in (k, loaded)]
    assert dtypes[0] == dtypes[1] and dtypes[0]["visual_rope_embeddings.args_0"] == torch.float32

    t = load_tiny("tiny-wan", seed=0, dtype=torch.bfloat16).transformer
    ref = load_tiny("tiny-wan", seed=0).transformer
    assert t.blocks[0].scale_shift_table.dtype == torch.float32
    assert t.blocks[0].norm2.weight.dtype == torch.float32
    assert t.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert t.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert torch.equal(t.blocks[0].attn1.to_q.weight, ref.blocks[0].attn1.to_q.weight.to(torch.bfloat16))
    assert t.rope.freqs_cos.dtype == torch.float32
    h = load_tiny("tiny-hunyuan", seed=0, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in h.transformer.parameters())
    assert h.vae.dtype == torch.bfloat16
