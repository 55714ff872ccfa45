"""Cosmos (``CosmosTransformer3DModel``: Predict2 video-to-world, Predict2.5 text/video-to-world, Cosmos 1.0
text-to-world): radial attention on the blocks' self-attention against the stock processors restricted to the radial
token mask, the denoising steps of pipelines whose calls are in other units than their schedule, the pipelines' own
rules, the training call, the context-parallel plan and the CLI (CPU).

The registry-wide tests (test_families.py, test_integration.py, test_eval.py, test_compile.py, ...) cover the tiny
Cosmos pipelines as built; here the transformer is called directly with the arguments its pipeline passed.
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0

import radial_diffusers as rd
from attention_reference import sdpa_restricted_to
from tiny_calls import first_transformer_call
from radial_diffusers.pipelines import geometry_problem, missing_dependency
from radial_diffusers.processors import RadialCosmosAttnProcessor
from radial_diffusers.tiny import default_call_kwargs, load_tiny

SPARSE = rd.RadialConfig(num_inference_steps=1, dense_steps=0, dense_layers=0, block_size=16)
PROMPTS = ["a cat dancing on the beach", "a red car in the city at night"]


def _image(seed: int = 0) -> PIL.Image.Image:
    gen = torch.Generator().manual_seed(seed)
    return PIL.Image.fromarray((torch.rand(128, 128, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _inputs(name: str) -> dict:
    """What the tiny pipeline ``name`` is called with here: two prompts, 17 frames at 128x128 (5 latent frames of
    8 x 8 tokens; Cosmos 1.0's x8 VAE: 3), Predict2 from an image, Predict2.5 from the first 5 frames of a video (its
    video-to-world mode: 2 latent frames given), Cosmos 1.0 from text."""
    kwargs = dict(default_call_kwargs(name), prompt=PROMPTS, num_frames=17, height=128, width=128)
    if name == "tiny-cosmos2":
        kwargs["image"] = _image()
    elif name == "tiny-cosmos2.5":
        kwargs["video"] = torch.rand(1, 3, 5, 128, 128, generator=torch.Generator().manual_seed(1))
        kwargs["prompt"] = PROMPTS[0]  # the pipeline takes one prompt with a video
    return kwargs


@pytest.mark.parametrize("name", ["tiny-cosmos2", "tiny-cosmos2.5"])
def test_sparse_self_attention_equals_stock_with_the_token_mask(name):
    """The first call of a video-to-world run (the given frames at a low noise level: a per-frame timestep) through
    the radial transformer equals the stock transformer whose self-attention SDPA calls see the radial token mask."""
    pipe = load_tiny(name)
    kwargs = first_transformer_call(pipe, num_inference_steps=1, **_inputs(name))
    kwargs.pop("return_dict")
    assert kwargs["timestep"].shape[2:] == (5, 1, 1) and kwargs["timestep"].flatten().unique().numel() == 2
    transformer = pipe.transformer
    with torch.no_grad():
        stock = transformer(**kwargs, return_dict=False)[0]
        state = rd.apply_radial_attention(transformer, SPARSE)
        try:
            got = transformer(**kwargs, return_dict=False)[0]
        finally:
            rd.remove_radial_attention(transformer)
        seq = state.layout.seq_len
        calls = []
        with sdpa_restricted_to(state.layout.token_mask(), self_attention_from=seq, calls=calls):
            want = transformer(**kwargs, return_dict=False)[0]
    assert state.geometry == (5, 8, 8) and state.layout.density < 0.8
    assert calls == [(seq, seq)] * len(transformer.transformer_blocks)  # the cross-attention is left alone
    assert dict(state.sparse_calls) == {0: 1, 1: 1} and sum(state.dense_calls.values()) == 0
    torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=0)
    assert (got - stock).abs().max() > 100 * (got - want).abs().max()  # the mask changed the computation


def test_only_the_self_attention_gets_radial_processors():
    pipe = load_tiny("tiny-cosmos2.5")
    rd.apply_radial_attention(pipe)
    for block in pipe.transformer.transformer_blocks:
        assert type(block.attn1.processor) is RadialCosmosAttnProcessor
        assert type(block.attn2.processor) is CosmosAttnProcessor2_0
    rd.remove_radial_attention(pipe)
    assert all(type(b.attn1.processor) is CosmosAttnProcessor2_0 for b in pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("name", ["tiny-cosmos2", "tiny-cosmos2.5", "tiny-cosmos1"])
def test_steps_are_counted_though_the_calls_are_not_in_schedule_units(name):
    """Predict2 calls its transformer with sigma / (sigma + 1) and Predict2.5 with the sigma in [0, 1], while their
    schedules hold other timesteps (Predict2.5's up to 1000: 0.995 is not the entry 9); Cosmos 1.0 passes its EDM
    schedule's entries. Each step is the pipeline's, and its two guidance calls share its dense / sparse decision."""
    pipe = load_tiny(name)
    pipe.set_progress_bar_config(disable=True)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    seen = []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, out: seen.append((int(state.step), state.processors[0].use_sparse)))
    kwargs = _inputs(name)
    with torch.no_grad():
        pipe(num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
    hook.remove()
    assert seen == [(0, False), (0, False), (1, True), (1, True), (2, True), (2, True)]


@pytest.mark.parametrize("name", ["tiny-cosmos2", "tiny-cosmos2.5"])
def test_bf16_steps_follow_the_pipeline_schedule(name):
    """In bfloat16, Predict2's sigma / (sigma + 1) rounds neighbouring steps of a 35-step schedule to one value (near
    1 bf16 values are 2**-8 apart): the hook takes each step from the pipeline's own current timestep (a tensor in
    Predict2, a Python number in Predict2.5), not from the calls."""
    pipe = load_tiny(name, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=0.3, dense_layers=0, block_size=16))
    seen, levels = [], []

    def record(module, args, kwargs):
        levels.append(float(kwargs["timestep"].float().amax()))

    pre = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    post = pipe.transformer.register_forward_hook(lambda *a: seen.append(int(state.step)))
    kwargs = dict(_inputs(name), num_frames=9, height=32, width=32)
    kwargs.pop("video", None)  # Predict2.5: text-to-world
    with torch.no_grad():
        pipe(num_inference_steps=35, output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs)
    pre.remove()
    post.remove()
    assert seen == [step for step in range(35) for _ in range(2)]  # each step's two guidance calls
    if name == "tiny-cosmos2":
        assert len(set(levels)) < 35  # the calls alone could not tell every step apart
    assert state.num_steps == 35


def test_the_position_tables_bound_the_video():
    """The released configs' RoPE table has 128 positions shared by the three axes: 509 frames (x4 VAE) and
    2048-pixel sides; Cosmos 1.0's learnable position embedding holds max_size / patch per axis."""
    pipe = load_tiny("tiny-cosmos2.5")
    assert geometry_problem(pipe, 509, 64, 64) is None
    which, text = geometry_problem(pipe, 513, 64, 64)
    assert which == 0 and "positions for 128 token frames and this call needs 129; use 509 or fewer" in text
    assert geometry_problem(pipe, 17, 2064, 64)[0] == 1
    pipe.transformer.register_to_config(extra_pos_embed_type="learnable", max_size=(16, 240, 240))
    assert geometry_problem(pipe, 61, 64, 64) is None and geometry_problem(pipe, 65, 64, 64)[0] == 0


def test_cosmos1_decodes_at_most_the_frames_of_its_latent_statistics():
    """Cosmos 1.0's pipelines un-normalise with per-frame latent statistics (16 latent frames in the released VAE
    config and Diffusers' default): 121 frames at most, said before the call (the pipeline fails in its decode)."""
    pipe = load_tiny("tiny-cosmos1")
    assert len(pipe.vae.config.latents_mean) == 16 * 16
    assert geometry_problem(pipe, 121, 64, 64) is None
    which, text = geometry_problem(pipe, 129, 64, 64)
    assert which == 0 and "makes at most 121 frames" in text and "cover 16 latent frames" in text
    with pytest.raises(RuntimeError, match="must match the size"):  # what the pipeline does with 129
        pipe(prompt="a car", num_frames=129, height=32, width=32, num_inference_steps=1, output_type="np",
             **default_call_kwargs("tiny-cosmos1"))
    assert geometry_problem(load_tiny("tiny-cosmos2.5"), 509, 64, 64) is None  # the Wan VAE: per channel only


def test_a_released_config_without_torchvision_is_a_clear_error(monkeypatch, data_dir, tmp_path):
    """A transformer that concatenates the padding mask (every released config) needs torchvision: generate and
    training say so before the call, training before anything is encoded."""
    import importlib.util

    from lora_training import ConfigError
    from lora_training.train import _adapter
    from train_helpers import run_config

    pipe = load_tiny("tiny-cosmos2.5")
    assert missing_dependency(pipe) is None  # the tiny transformers concatenate no padding mask
    pipe.transformer.register_to_config(concat_padding_mask=True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else
                        find_spec(name, *a))
    assert "pip install torchvision" in missing_dependency(pipe)
    cfg = run_config(data_dir, tmp_path / "run", model="tiny-cosmos2.5", num_frames=17, height=64, width=64)
    with pytest.raises(ConfigError, match="model: CosmosTransformer3DModel with concat_padding_mask resizes its "
                                          "padding mask with torchvision"):
        _adapter(cfg, pipe)


def test_cli_runs_predict25_from_a_folder_without_an_image(tmp_path, capsys, monkeypatch):
    """A saved Predict2.5 pipeline (its pass-through guardrail saved with it) loads back and generates text-to-world
    without --image, which its pipeline takes but does not need, and takes one where torchvision can convert it;
    Predict2 still requires one."""
    import importlib.util

    from radial_diffusers.cli import main

    for name in ("tiny-cosmos2.5", "tiny-cosmos2"):
        load_tiny(name).save_pretrained(tmp_path / name)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", str(tmp_path / "tiny-cosmos2.5"), "--frames", "17", "--height", "64",
                 "--width", "64", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["generate", "--model", str(tmp_path / "tiny-cosmos2"), "--frames", "17", "--height", "64",
                 "--width", "64", "--steps", "2", "--out", str(tmp_path / "w.mp4")]) == 2
    assert "--image is required" in capsys.readouterr().err
    image = tmp_path / "first.png"
    _image().save(image)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else
                        find_spec(name, *a))
    for model in (str(tmp_path / "tiny-cosmos2.5"), "tiny-cosmos2.5"):  # a folder, and the tiny model by name
        assert main(["generate", "--model", model, "--image", str(image), "--frames", "17", "--height", "64",
                     "--width", "64", "--steps", "2", "--out", str(tmp_path / "i.mp4")]) == 2
        assert "Cosmos2_5_PredictBasePipeline converts its image with torchvision" in capsys.readouterr().err


def test_the_training_step_calls_the_transformer_as_the_pipeline_does():
    """Predict2.5 text-to-world: the LoRA training adapter's transformer call on the pipeline's own latent, noise
    level (the objective's timestep, 1000 sigma; the pipeline passes the sigma per frame) and text equals the
    pipeline's call: the zero condition and padding masks, the text from every Qwen layer."""
    from radial_diffusers.training_adapters import TrainingAdapter, TrainingOptions

    pipe = load_tiny("tiny-cosmos2.5")
    kwargs = default_call_kwargs("tiny-cosmos2.5")
    call = first_transformer_call(pipe, prompt="a car on the street", num_frames=17, height=128, width=128,
                                  num_inference_steps=2, guidance_scale=1.0, **kwargs)
    adapter = TrainingAdapter.for_pipeline(pipe, TrainingOptions(num_frames=17, height=128, width=128))
    text = adapter.encode_text("a car on the street", kwargs, "cpu")
    torch.testing.assert_close(text["prompt_embeds"][None], call["encoder_hidden_states"], rtol=0, atol=0)
    sigma = pipe.scheduler.sigmas[0]
    assert call["timestep"].shape == (1, 1, 5, 1, 1) and bool((call["timestep"] == sigma).all())
    timestep = (sigma * 1000).view(1)  # what Objective.draw gives for this noise level
    batch = {"latents": call["hidden_states"], "prompt_embeds": text["prompt_embeds"][None]}
    with torch.no_grad():
        got = adapter.predict(pipe.transformer, call["hidden_states"], timestep, batch, "cpu", torch.float32)
        want = pipe.transformer(**{**call, "return_dict": True}).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("name, refusal", [
    ("tiny-cosmos2", "LoRA training of Cosmos supports text-to-video only, not tiny-cosmos2"),  # before loading
    ("tiny-cosmos1", "LoRA training of Cosmos supports Cosmos2_5_PredictBasePipeline, not CosmosTextToWorldPipeline "
                     r"\(Cosmos 1.0's pipelines sample with an EDM scheduler"),
])
def test_training_other_pipelines_is_refused_with_the_reason(name, refusal, data_dir, tmp_path):
    """Predict2's video-to-world pipeline (an image to condition on; no LoRA loader) and Cosmos 1.0's (an EDM
    scheduler) are refused before anything is encoded."""
    from lora_training import ConfigError
    from lora_training.train import train
    from train_helpers import run_config

    with pytest.raises(ConfigError, match=refusal):
        train(run_config(data_dir, tmp_path / "run", model=name, num_frames=17, height=64, width=64, max_steps=1),
              progress=False)


def test_context_parallel_plan_and_its_dense_calls():
    """The plan splits the RoPE tables where they are made, the video at the first block, the per-token modulation
    at every block and ``norm_out``, the learnable position embedding (Cosmos 1.0) where it is made, and gathers at
    ``proj_out`` (tests/test_parallel.py runs it on 2 and 4 processes). Cosmos' stock processor takes no parallel
    config: dense calls under context parallelism run our op, and ``--attention dense`` is refused."""
    import argparse

    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    from radial_diffusers.cli import CLIError, _check_parallel_attention
    from radial_diffusers.families import get_family
    from radial_diffusers.parallel import cosmos_plan

    transformer = load_tiny("tiny-cosmos2.5").transformer
    plan = cosmos_plan(transformer)
    blocks = len(transformer.transformer_blocks)
    assert set(plan) == {"rope", "norm_out", "proj_out", *(f"transformer_blocks.{i}" for i in range(blocks))}
    assert plan["rope"][0].split_output and plan["rope"][0].split_dim == 0
    assert set(plan["transformer_blocks.0"]) == {"hidden_states", "embedded_timestep", "temb", "controlnet_residual"}
    assert set(plan[f"transformer_blocks.{blocks - 1}"]) == {"embedded_timestep", "temb", "controlnet_residual"}
    assert set(plan["norm_out"]) == {"embedded_timestep", "temb"}
    assert isinstance(plan["proj_out"], ContextParallelOutput) and plan["proj_out"].gather_dim == 1
    transformer.register_to_config(extra_pos_embed_type="learnable")
    transformer.learnable_pos_embed = torch.nn.Identity()  # only its presence matters to the plan
    entry = cosmos_plan(transformer)["learnable_pos_embed"][0]
    assert isinstance(entry, ContextParallelInput) and entry.split_output and entry.split_dim == 1

    family = get_family("cosmos")
    assert not family.stock_runs_parallel and "do not take Diffusers' parallel config" in family.stock_parallel_problem()
    args = argparse.Namespace(attention="dense", ulysses=2, ring=1)
    with pytest.raises(CLIError, match="Cosmos's stock attention processors do not take Diffusers' parallel config"):
        _check_parallel_attention(args, family)


def test_cosmos1_generates_at_its_own_frame_rate(tmp_path, monkeypatch):
    """Cosmos 1.0's pipelines condition the RoPE on ``fps``, 30 by default (Predict2's family default is 16):
    ``generate`` without ``--fps`` passes and writes 30 for them, 16 for Predict2."""
    import functools

    import diffusers
    import imageio.v3 as iio

    from radial_diffusers.cli import main
    from radial_diffusers.families import get_family

    family = get_family("cosmos")
    assert family.fps_for(load_tiny("tiny-cosmos1")) == 30 and family.fps_for(load_tiny("tiny-cosmos2")) == 16
    seen = []
    original = diffusers.CosmosTextToWorldPipeline.__call__

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        seen.append(kwargs.get("fps"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.CosmosTextToWorldPipeline, "__call__", call)
    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-cosmos1", "--frames", "17", "--height", "64", "--width", "64",
                 "--steps", "2", "--out", str(out)]) == 0
    assert seen == [30] and round(iio.immeta(out)["fps"]) == 30


def test_revision_reaches_from_pretrained_and_is_refused_elsewhere(tmp_path, monkeypatch, capsys):
    """``--revision`` (Cosmos-Predict2.5's Diffusers weights live on a branch of its hub repository) is passed to
    ``from_pretrained`` for a hub id and refused, naming the fix, for a tiny model, a local folder and with a DF11
    checkpoint; the report records it."""
    import json

    import diffusers

    from radial_diffusers.cli import main

    folder = tmp_path / "c25"
    load_tiny("tiny-cosmos2.5").save_pretrained(folder)
    seen = {}
    original = diffusers.DiffusionPipeline.from_pretrained

    def from_pretrained(name, **kwargs):  # the hub is offline here: the saved tiny pipeline stands in for the repo
        seen.update(name=name, revision=kwargs.pop("revision", None))
        return original(folder, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", staticmethod(from_pretrained))
    out = tmp_path / "v.mp4"
    args = ["--frames", "17", "--height", "64", "--width", "64", "--steps", "2"]
    assert main(["generate", "--model", "nvidia/Cosmos-Predict2.5-2B", "--revision", "diffusers/base/post-trained",
                 *args, "--out", str(out)]) == 0
    assert seen == {"name": "nvidia/Cosmos-Predict2.5-2B", "revision": "diffusers/base/post-trained"}
    assert json.loads(out.with_suffix(".json").read_text())["revision"] == "diffusers/base/post-trained"
    for model, extra, fix in (("tiny-cosmos2.5", [], "drop the revision"), (str(folder), [], "drop the revision"),
                              ("nvidia/Cosmos-Predict2.5-2B", ["--dfloat11", str(tmp_path)], "--local-dir DIR")):
        assert main(["generate", "--model", model, "--revision", "main", *extra, *args,
                     "--out", str(tmp_path / "w.mp4")]) == 2
        err = capsys.readouterr().err
        assert "--revision 'main'" in err and fix in err, err


def test_training_takes_a_revision_of_a_hub_id(data_dir, tmp_path, monkeypatch):
    """``revision:`` reaches the pipeline's loading, is part of the cache's identity (another revision is other
    weights), and is refused with the fix for a tiny model, a local folder and with ``dfloat11``."""
    import radial_diffusers.pipelines as pipelines
    from lora_training import ConfigError
    from lora_training.train import _adapter, _load_pipeline, _spec
    from train_helpers import run_config

    seen = {}

    def load(name, dtype=None, *, dfloat11=None, seed=0, revision=None):  # offline: the tiny model stands in
        seen.update(name=name, revision=revision)
        return load_tiny("tiny-cosmos2.5")

    monkeypatch.setattr(pipelines, "load_pipeline", load)
    cfg = run_config(data_dir, tmp_path / "run", model="tiny-cosmos2.5", num_frames=17, height=64, width=64)
    cfg.model, cfg.revision = "nvidia/Cosmos-Predict2.5-2B", "diffusers/base/post-trained"
    pipe = _load_pipeline(cfg, torch.float32)
    assert seen == {"name": "nvidia/Cosmos-Predict2.5-2B", "revision": "diffusers/base/post-trained"}
    assert _spec(cfg, _adapter(cfg, pipe)[0]).model == "nvidia/Cosmos-Predict2.5-2B@diffusers/base/post-trained"
    for model, extra, fix in (("tiny-cosmos2.5", {}, "drop revision"), (str(tmp_path), {}, "drop revision"),
                              ("nvidia/Cosmos-Predict2.5-2B", {"dfloat11": str(tmp_path)}, "--local-dir DIR")):
        with pytest.raises(ConfigError, match=f"revision: .*{fix}"):
            run_config(data_dir, tmp_path / "r2", model=model, revision="main", num_frames=17, height=64, width=64,
                       **extra)
