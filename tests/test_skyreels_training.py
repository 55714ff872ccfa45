"""SkyReels-V2 LoRA training: the adapter calls the transformer exactly as each pipeline does (text-to-video,
image-to-video, diffusion forcing with its per-frame timesteps and frame-rate class); diffusion forcing draws one
noise level per causal block, non-decreasing along the video; with a block-causal frame mask the radial gradients
equal autograd through SDPA under the radial AND causal masks. The registry-wide run and export of every tiny
SkyReels-V2 model is test_train_families.py's."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from lora_training.objective import Objective
from radial_diffusers.errors import ConfigError
from radial_diffusers.pipelines import one_window
from radial_diffusers.tiny import (tiny_skyreels_v2_df_pipeline, tiny_skyreels_v2_i2v_pipeline,
                                   tiny_skyreels_v2_pipeline)
from radial_diffusers.training_adapters import SkyReelsV2Training, TrainingAdapter, TrainingOptions
from tiny_calls import first_transformer_call

PROMPT = "a cat dancing on the beach"
TEXT = {"max_sequence_length": 16}


def _first_call(pipe, **call) -> dict:
    """The keyword arguments ``pipe(**call)`` passes its transformer first (seed 0, no guidance, two steps)."""
    return first_transformer_call(pipe, prompt=PROMPT, guidance_scale=1.0, num_inference_steps=2, **TEXT, **call)


CASES = {
    "t2v": (tiny_skyreels_v2_pipeline, {}),
    "i2v": (tiny_skyreels_v2_i2v_pipeline, {}),
    # the released DF checkpoints embed the frame-rate class (inject_sample_info); the tiny one does not by default
    "df-16fps": (lambda seed: tiny_skyreels_v2_df_pipeline(seed, inject_sample_info=True), {"fps": 16}),
    "df-24fps": (lambda seed: tiny_skyreels_v2_df_pipeline(seed, inject_sample_info=True), {"fps": 24}),
}


@pytest.mark.parametrize("case", CASES)
def test_training_call_equals_the_pipelines(case):
    make, extra = CASES[case]
    pipe = make(0)
    frames, side = 17, 64
    image = None
    if case == "i2v":
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        extra = {"image": image}
    call = _first_call(pipe, num_frames=frames, height=side, width=side, **extra)
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=frames, height=side, width=side,
                                                                 fps=extra.get("fps", 24)))
    assert type(adapter) is SkyReelsV2Training and adapter.diffusion_forcing == case.startswith("df")
    text = adapter.encode_text(PROMPT, TEXT, "cpu")
    torch.testing.assert_close(text["prompt_embeds"][None], call["encoder_hidden_states"], rtol=0, atol=0)
    noisy = call["hidden_states"][:, :16]
    batch = {"latents": noisy, "prompt_embeds": text["prompt_embeds"][None]}
    timestep = call["timestep"]
    if case == "i2v":
        video = torch.from_numpy(np.array(image))[None].expand(frames, -1, -1, -1)
        condition = adapter.encode_condition(video, "cpu")
        torch.testing.assert_close(condition["condition"][None], call["hidden_states"][:, 16:], rtol=0, atol=0)
        torch.testing.assert_close(condition["image_embeds"][None], call["encoder_hidden_states_image"], rtol=0,
                                   atol=0)
        batch.update({k: v[None] for k, v in condition.items()})
    if case.startswith("df"):
        assert timestep.shape == (1, noisy.shape[2])  # one timestep per latent frame
    with torch.no_grad():
        got = adapter.predict(pipe.transformer, noisy, timestep, batch, "cpu", torch.float32)
        want = pipe.transformer(**{**call, "return_dict": False})[0]
    assert torch.equal(got, want)
    if case == "df-16fps":  # the frame-rate class reaches the transformer: 24 fps clips are another class
        other = SkyReelsV2Training(pipe, TrainingOptions(num_frames=frames, height=side, width=side, fps=24))
        with torch.no_grad():
            assert not torch.allclose(other.predict(pipe.transformer, noisy, timestep, batch, "cpu", torch.float32),
                                      got)


@pytest.mark.parametrize("per_block", [1, 2, 3])
def test_diffusion_forcing_levels_synchronous_or_per_causal_block_non_decreasing(per_block):
    """Per sample: one level for every frame (the synchronous steps), or one per causal block sorted along the clip;
    a latent frame count the causal block does not divide is refused before anything is encoded."""
    pipe = tiny_skyreels_v2_df_pipeline(0, num_frame_per_block=per_block)
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=21, height=64, width=64))  # 6 frames
    draws = []

    def draw(n):
        draws.append(n)
        return torch.rand(n, generator=torch.Generator().manual_seed(len(draws)))

    shape = torch.Size((64, 16, 6, 4, 4))
    levels = adapter.noise_levels(draw, shape, torch.Generator().manual_seed(0))
    assert draws == [64 * (6 // per_block), 64] and levels.shape == (64, 6)
    assert (levels[:, 1:] >= levels[:, :-1]).all()
    for f in range(6):  # the frames of one causal block share their level
        torch.testing.assert_close(levels[:, f], levels[:, f - f % per_block], rtol=0, atol=0)
    synchronous = (levels == levels[:, :1]).all(dim=1)
    assert 16 < int(synchronous.sum()) < 48  # about half, from the step's generator
    if per_block < 6:
        assert (levels[~synchronous, -1] > levels[~synchronous, 0]).all()  # independent draws, sorted
    # the per-sample adapters draw one level a sample
    assert TrainingAdapter.for_pipeline(tiny_skyreels_v2_pipeline(0)).noise_levels(draw, shape).shape == (64,)
    if per_block > 1:
        with pytest.raises(ConfigError, match=r"num_frames: 17 frames are 5 latent frames, not a multiple of the "
                                              rf"transformer's num_frame_per_block \({per_block}"):
            TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=17, height=64, width=64))


def test_diffusion_forcing_batch_runs_one_sample_at_a_time_with_the_frame_rate():
    """Diffusers tiles the frame-rate embedding of a (B, F) timestep out of order for B > 1: a batch of two runs as
    two calls, each equal to the sample's own call."""
    pipe = tiny_skyreels_v2_df_pipeline(0, inject_sample_info=True)
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=17, height=64, width=64, fps=16))
    g = torch.Generator().manual_seed(0)
    text = adapter.encode_text(PROMPT, TEXT, "cpu")["prompt_embeds"]
    batch = {"latents": torch.randn(2, 16, 5, 8, 8, generator=g), "prompt_embeds": torch.stack([text, text.flip(0)])}
    timestep = torch.rand(2, 5, generator=g) * 1000
    with torch.no_grad():
        both = adapter.predict(pipe.transformer, batch["latents"], timestep, batch, "cpu", torch.float32)
        each = [adapter.predict(pipe.transformer, batch["latents"][i:i + 1], timestep[i:i + 1],
                                {k: v[i:i + 1] for k, v in batch.items()}, "cpu", torch.float32) for i in range(2)]
    assert torch.equal(both, torch.cat(each)) and not torch.equal(each[0], each[1])


def test_per_frame_levels_mix_each_frame_at_its_own_level():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 5, 3, 3, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)
    levels = torch.rand(2, 5, generator=g)
    objective = Objective("flow")
    xt, timestep, target = objective.draw(x0, noise, levels)
    for b in range(2):
        for f in range(5):
            s = float(levels[b, f])
            torch.testing.assert_close(xt[b, :, f], (1 - s) * x0[b, :, f] + s * noise[b, :, f])
    torch.testing.assert_close(timestep, levels * 1000)
    torch.testing.assert_close(target, noise - x0)
    with pytest.raises(ValueError, match="per-frame noise levels .* need flow matching"):
        Objective("epsilon", scheduler=object()).draw(x0, noise, levels)
    with pytest.raises(ValueError, match=r"\(B, F'\) = their shape"):
        objective.draw(x0, noise, levels[:, :4])


def test_diffusion_forcing_image_to_video_pipeline_is_refused_with_the_fix():
    from diffusers import SkyReelsV2DiffusionForcingImageToVideoPipeline, SkyReelsV2DiffusionForcingVideoToVideoPipeline

    parts = tiny_skyreels_v2_df_pipeline(0).components
    with pytest.raises(ConfigError, match="runs through SkyReelsV2DiffusionForcingPipeline, not "
                                          "SkyReelsV2DiffusionForcingImageToVideoPipeline: load the same checkpoint"):
        TrainingAdapter.for_pipeline(SkyReelsV2DiffusionForcingImageToVideoPipeline(**parts))
    # video-to-video extends a clean prefix: trained as diffusion forcing, as the text-to-video pipeline; it always
    # extends by overlap_history, so a long call is not turned into one window
    v2v = SkyReelsV2DiffusionForcingVideoToVideoPipeline(**parts)
    assert TrainingAdapter.for_pipeline(v2v).diffusion_forcing
    assert one_window(v2v, 193, {}) is None
    call = {}
    assert "193 frames run as one window" in one_window(tiny_skyreels_v2_df_pipeline(0), 193, call)
    assert call == {"base_num_frames": 193}


def test_causal_block_gradients_equal_sdpa_under_radial_and_causal_masks():
    """num_frame_per_block 2 (the transformer's block-causal frame mask) at 6 latent frames of 12 x 12 tokens: LoRA
    gradients of the diffusion-forcing loss through radial attention == autograd through the stock processors'
    SDPA with the radial token mask AND-ed to the transformer's own mask."""
    from peft import LoraConfig

    from lora_training.objective import sample_levels
    from lora_training.train import training_loss

    pipe = tiny_skyreels_v2_df_pipeline(0, num_frame_per_block=2)
    frames, side = 21, 192
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=frames, height=side, width=side))
    g = torch.Generator().manual_seed(1)
    text = adapter.encode_text(PROMPT, TEXT, "cpu")
    batch = {"latents": torch.randn(1, 16, 6, side // 8, side // 8, generator=g),
             "prompt_embeds": text["prompt_embeds"][None]}
    levels = adapter.noise_levels(lambda n: sample_levels(n, torch.Generator().manual_seed(2), sampling="uniform",
                                                          logit_mean=0.0, logit_std=1.0), batch["latents"].shape)
    assert levels.shape == (1, 6) and (levels[:, 0::2] == levels[:, 1::2]).all()

    def grads(token_mask=None):
        tr = tiny_skyreels_v2_df_pipeline(0, num_frame_per_block=2).transformer
        tr.requires_grad_(False)
        torch.manual_seed(0)
        tr.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                  init_lora_weights=False))
        cfg = type("Cfg", (), dict(timestep_sampling="uniform", logit_mean=0.0, logit_std=1.0))
        state = None
        if token_mask is None:
            state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_layers=0, dense_steps=0, block_size=16))
        calls = []
        with (nullcontext() if token_mask is None
              else sdpa_restricted_to(token_mask, self_attention_from=token_mask.shape[0], calls=calls)):
            loss = training_loss(tr, adapter, Objective("flow"), batch, cfg, 1.0, torch.Generator().manual_seed(3),
                                 torch.device("cpu"), torch.float32)
        loss.backward()
        assert len(calls) == (0 if token_mask is None else 2)  # each block's attn1, under the causal mask too
        return {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}, state

    sparse, state = grads()
    assert sum(state.sparse_calls.values()) > 0 and state.layout.density < 0.8, state.layout.density
    dense, _ = grads(state.layout.token_mask())
    assert sparse.keys() == dense.keys() and len(sparse) == 2 * 8 * 2
    for k in sparse:
        torch.testing.assert_close(sparse[k], dense[k], rtol=1e-4, atol=1e-6)


def test_diffusion_forcing_run_validates_beyond_the_97_frame_window(data_dir, tmp_path, monkeypatch):
    """A DF checkpoint (here a local folder: the tiny model's own kwargs set overlap_history) validates a video longer
    than the pipeline's base_num_frames as one window, as generate runs it; the export loads into the pipeline."""
    import imageio

    from lora_training.train import train
    from train_helpers import run_config

    import functools

    import diffusers

    seen = []
    original = diffusers.SkyReelsV2DiffusionForcingPipeline.__call__

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("base_num_frames", "fps")})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.SkyReelsV2DiffusionForcingPipeline, "__call__", call)
    folder = tmp_path / "df"
    tiny_skyreels_v2_df_pipeline(0, inject_sample_info=True).save_pretrained(folder)
    cfg = run_config(data_dir, tmp_path / "run", model=str(folder), fps=16, max_steps=1, validate_every=1,
                     validation_frames=101, validation_steps=1, height=32, width=32)
    final = train(cfg, progress=False)
    assert seen == [{"base_num_frames": 101, "fps": 16}]  # the clips' frame-rate class in the render too
    assert len(imageio.mimread(tmp_path / "run" / "validation" / "step-0000001.mp4", memtest=False)) == 101
    tiny_skyreels_v2_df_pipeline(0, inject_sample_info=True).load_lora_weights(final)
