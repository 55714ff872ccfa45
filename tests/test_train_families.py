"""LoRA training over the model-family registry: every trainable tiny model trains two steps with radial attention,
its export loads back with ``pipe.load_lora_weights``; Wan2.2 A14B trains one expert on that expert's noise levels;
the objective matches each scheduler's own sampling step; families and pipelines that cannot train are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_training import ConfigError
from lora_training.data import LatentDataset, collate
from lora_training.objective import Objective
from lora_training.train import train
from radial_diffusers.families import random_tiny_models, tiny_models
from radial_diffusers.tiny import load_tiny
from train_helpers import checkpoint_lora, model_output, run_config


def _trains(name: str) -> bool:
    """Whether the tiny model ``name`` trains: its family (or the variant it is) has the feature and its adapter
    takes its pipeline (text-to-video everywhere, image-to-video where the adapter says so; an adapter may name the
    pipelines it trains)."""
    from radial_diffusers.families import _resolve

    family, tiny = tiny_models()[name]
    if family.training is None or (tiny.image_to_video and not _resolve(family.training).image_to_video):
        return False
    pipe = load_tiny(name)
    variant = family.variant_for(pipe, pipe.transformer)
    adapter = _resolve(family.training)
    return ("training" in (variant.features if variant is not None else family.features)
            and (adapter.pipelines is None or type(pipe).__name__ in adapter.pipelines))


# A small training geometry per tiny model at which the mask at block 16 is sparse (frames / sides as the family's real
# VAE requires them: LTX-Video 8k+1 and multiples of 32, Mochi 6k+1, TI2V-5B multiples of 32, CogVideoX 1.5 8k+5).
_GEOMETRY = {"tiny-ltx": (17, 32, 32), "tiny-mochi": (13, 64, 64), "tiny-wan2.2-ti2v": (17, 128, 128),
             "tiny-hunyuan1.5": (17, 128, 128), "tiny-cogvideox1.5": (21, 64, 64),  # 1.5: whole temporal patches
             "tiny-cosmos2.5": (17, 128, 128)}
TRAINABLE = [n for n in random_tiny_models() if _trains(n) and n not in ("tiny-wan", "tiny-wan-i2v")]  # test_train.py


@pytest.mark.parametrize("name", TRAINABLE)
def test_two_radial_steps_then_export_reloads(name, data_dir, tmp_path):
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    frames, height, width = _GEOMETRY.get(name, (17, 64, 64))
    two = getattr(load_tiny(name), "transformer_2", None) is not None
    expert = "low_noise" if two else None
    cfg = run_config(data_dir, tmp_path / "run", model=name, num_frames=frames, height=height, width=width,
                     max_steps=2, expert=expert)
    final = train(cfg, progress=False)
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert len(report["losses"]) == 2 and all(np.isfinite(report["losses"]))
    assert report["attention"] == "radial" and report["density"] < 0.8, report  # genuinely sparse in training
    weights = load_file(str(final / "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("transformer.") for k in weights)

    batch = collate([LatentDataset(cfg.cache_path)[0]])
    attr = "transformer_2" if two else "transformer"
    trained = getattr(load_tiny(name, 0), attr)
    trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=cfg.targets))
    set_peft_model_state_dict(trained, checkpoint_lora(tmp_path / "run"))
    pipe = load_tiny(name, 0)
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(final, adapter_name="length", **({"load_into_transformer_2": True} if two else {}))
        assert report["load"] == ("pipe.load_lora_weights(dir, load_into_transformer_2=True)" if two
                                  else "pipe.load_lora_weights(dir)")
    else:  # HunyuanVideo-1.5: Diffusers 0.42 gives its pipeline no LoRA loader; the transformer loads the same file
        pipe.transformer.load_lora_adapter(final, prefix="transformer", use_safetensors=True, adapter_name="length")
        assert report["load"] == "pipe.transformer.load_lora_adapter(dir, prefix='transformer', use_safetensors=True)"
    got = model_output(getattr(pipe, attr), cfg, batch)
    assert torch.equal(got, model_output(trained, cfg, batch))
    assert not torch.allclose(got, model_output(getattr(load_tiny(name, 0), attr), cfg, batch))


def test_wan22_expert_trains_on_its_noise_levels(data_dir, tmp_path, monkeypatch):
    """high_noise sees only t >= boundary_ratio * 1000, low_noise only below; the other expert is never called."""
    import lora_training.train as train_mod

    seen: dict[str, list] = {}
    original = train_mod.training_loss

    def spy(transformer, adapter, objective, batch, cfg, *args):
        calls = seen.setdefault(cfg.expert, [])

        def record(module, args, kwargs):
            calls.append((module is adapter.pipe.transformer, float(kwargs["timestep"].max()),
                          float(kwargs["timestep"].min())))

        handle = adapter.transformer.register_forward_pre_hook(record, with_kwargs=True)
        try:
            return original(transformer, adapter, objective, batch, cfg, *args)
        finally:
            handle.remove()

    monkeypatch.setattr(train_mod, "training_loss", spy)
    boundary = load_tiny("tiny-wan2.2").config.boundary_ratio * 1000
    for expert in ("high_noise", "low_noise"):
        cfg = run_config(data_dir, tmp_path / expert, model="tiny-wan2.2", num_frames=9, height=32, width=32,
                         max_steps=6, batch_size=2, checkpoint_every=6, expert=expert, timestep_sampling="uniform",
                         cache_dir=str(tmp_path / "cache"))
        train(cfg, progress=False)
    high, low = seen["high_noise"], seen["low_noise"]
    assert len(high) == len(low) == 6
    report = json.loads((tmp_path / "low_noise" / "train_report.json").read_text())
    assert report["preset"] == "wan2.2"  # the pipeline's preset (decay 0.8), which the bare expert cannot tell
    assert all(first and lo >= boundary for first, _, lo in high)
    assert all(not first and hi < boundary for first, hi, _ in low)


def test_refusals_name_the_fix(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="expert: WanPipeline has two experts .*set expert: high_noise or "
                                          "expert: low_noise"):
        train(run_config(data_dir, tmp_path / "a", model="tiny-wan2.2", max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="expert: WanPipeline has one transformer .*drop expert: high_noise"):
        train(run_config(data_dir, tmp_path / "b", expert="high_noise", max_steps=1), progress=False)
    untrained = [n for n in tiny_models() if tiny_models()[n][0].training is None]
    for name in untrained[:1]:  # a family without a training adapter (e.g. Wan VACE)
        with pytest.raises(ConfigError, match="LoRA training does not support .* it supports .*Wan2.1"):
            train(run_config(data_dir, tmp_path / "c", model=name, max_steps=1), progress=False)


def test_refusals_before_loading(data_dir, tmp_path, monkeypatch):
    """What the model's name tells is refused by the config, before a (for a real checkpoint: downloaded, minutes
    long) load: a family or variant that does not train, an image-to-video model of a text-to-video trainer, a local
    two-expert pipeline without expert, a DF11 path that does not exist; and a text length below 1."""
    import lora_training.train as train_mod

    monkeypatch.setattr(train_mod, "_load_pipeline", lambda *a, **k: pytest.fail("loaded before the refusal"))
    for name, match in (("tiny-wan-vace", "does not support Wan VACE"),
                        ("tiny-wan2.2-vace", "does not support Wan2.2 VACE"),
                        ("tiny-ltx2", "does not support LTX-2"),
                        ("tiny-hunyuan1.5-i2v", "HunyuanVideo-1.5 supports text-to-video only")):
        with pytest.raises(ConfigError, match=f"model: .*{match}"):
            run_config(data_dir, tmp_path / "a", model=name)
    folder = tmp_path / "wan-a14b"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(ConfigError, match="expert: .* has two experts .*set expert: high_noise or expert: low_noise"):
        run_config(data_dir, tmp_path / "a", model=str(folder))
    assert run_config(data_dir, tmp_path / "a", model=str(folder), expert="low_noise")
    with pytest.raises(ConfigError, match="dfloat11: 'no/such/df11-dir': no such file or directory"):
        run_config(data_dir, tmp_path / "a", dfloat11="no/such/df11-dir", mixed_precision="bf16")
    with pytest.raises(ConfigError, match="max_sequence_length: must be >= 1"):
        run_config(data_dir, tmp_path / "a", max_sequence_length=0)


@pytest.mark.parametrize("name", [n for n in random_tiny_models() if _trains(n)])
def test_default_lora_targets_are_the_blocks_attention(name):
    """Each family's default target_modules hit the attention projections of its transformer blocks only (not a
    caption pool or a text refiner, which never see the video), and every block's q, k, v and out."""
    import re

    from radial_diffusers.families import get_family

    family = tiny_models()[name][0]
    transformer = load_tiny(name).transformer
    hit = [n for n, _ in transformer.named_modules() if re.fullmatch(get_family(family.name).lora_targets, n)]
    blocks = r"(blocks|transformer_blocks|single_transformer_blocks|visual_transformer_blocks)\.\d+\."
    assert hit and all(re.match(blocks, n) for n in hit), hit
    # Kandinsky 5 names its projections to_query / to_key / to_value / out_layer
    projections = ({"to_query", "to_key", "to_value", "out_layer"} if family.name == "kandinsky5"
                   else {"to_q", "to_k", "to_v", "to_out.0"})
    assert {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n in hit} == projections


def test_target_modules_that_match_nothing_refused_before_encoding(data_dir, tmp_path):
    cfg = run_config(data_dir, tmp_path / "run", target_modules=r".*\.to_qq", max_steps=1)
    with pytest.raises(ConfigError, match=r"target_modules: the regex '\.\*\\\.to_qq' match no module of "
                                          r"WanTransformer3DModel \(its linear layers are named like blocks\.0\.attn1"
                                          r"\.to_q, "):
        train(cfg, progress=False)
    assert not cfg.cache_path.exists()  # nothing encoded
    with pytest.raises(ConfigError, match="match no module"):
        train(run_config(data_dir, tmp_path / "run", target_modules=["to_qq"], max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="match no module"):  # containers only: no layer a LoRA can wrap
        train(run_config(data_dir, tmp_path / "run", target_modules=r"blocks\.\d+\.attn1", max_steps=1),
              progress=False)
    assert not cfg.cache_path.exists()
    from lora_training.train import _check_targets

    _check_targets(load_tiny("tiny-wan").transformer, "all-linear", False)  # PEFT's shorthand passes


def test_ltx_frames_rule_before_loading(data_dir, tmp_path):
    """The family's frames / sides rule is checked before loading: for a tiny model, and for a local pipeline folder
    by the transformer class its model_index.json names (nothing is loaded; an unknown class is left to loading)."""
    with pytest.raises(ConfigError, match="num_frames: got 13; LTX-Video needs 8k\\+1 frames .*use 9 or 17"):
        run_config(data_dir, tmp_path / "d", model="tiny-ltx", num_frames=13, height=32, width=32)
    with pytest.raises(ConfigError, match="height: got 48; LTX-Video needs multiples of 32"):
        run_config(data_dir, tmp_path / "d", model="tiny-ltx", num_frames=17, height=48, width=32)
    folder = tmp_path / "ltx-pipeline"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline",
                                                         "transformer": ["diffusers", "LTXVideoTransformer3DModel"]}))
    with pytest.raises(ConfigError, match="num_frames: got 13; LTX-Video needs 8k\\+1"):
        run_config(data_dir, tmp_path / "d", model=str(folder), num_frames=13, height=32, width=32)
    (folder / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "SomeNewTransformer"]}))
    assert run_config(data_dir, tmp_path / "d", model=str(folder), num_frames=13, height=32, width=32)


def test_ltx_condition_checkpoint_trains_as_ltx_pipeline(data_dir, tmp_path):
    """LTX-Video 0.9.7's repos load as LTXConditionPipeline (its `image` argument read as image-to-video, which LTX
    training refused); training runs its components as LTXPipeline, whose calls carry the latent grid."""
    import diffusers

    from lora_training.train import _adapter, _load_pipeline

    folder = tmp_path / "ltx-0.9.7-like"
    diffusers.LTXConditionPipeline(**load_tiny("tiny-ltx").components).save_pretrained(folder)
    cfg = run_config(data_dir, tmp_path / "run", model=str(folder), num_frames=17, height=32, width=32)
    pipe = _load_pipeline(cfg, torch.float32)
    assert type(pipe).__name__ == "LTXPipeline"
    assert type(_adapter(cfg, pipe)[0]).__name__ == "LTXVideoTraining"


@pytest.mark.parametrize("fps", [12, None])
def test_ltx_validation_renders_at_the_trained_frame_rate(fps, data_dir, tmp_path, monkeypatch):
    """LTX-Video's RoPE scale holds the frame rate: validation renders with the one the step trains with (the clips'
    fps; 25, LTXPipeline's default, for consecutive frames), not the pipeline's default."""
    import functools

    import diffusers

    scales = []
    original = diffusers.LTXVideoTransformer3DModel.forward

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        scales.append((self.training, tuple(float(x) for x in kwargs["rope_interpolation_scale"])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.LTXVideoTransformer3DModel, "forward", forward)
    cfg = run_config(data_dir, tmp_path / "run", model="tiny-ltx", num_frames=17, height=32, width=32, fps=fps,
                     max_steps=1, validate_every=1, validation_steps=1)
    train(cfg, progress=False)
    trained = {s for training, s in scales if training}
    assert trained == {s for training, s in scales if not training} and len(trained) == 1
    pipe = load_tiny("tiny-ltx")
    spatial = float(pipe.vae_spatial_compression_ratio)
    assert trained == {(pipe.vae_temporal_compression_ratio / (fps or 25), spatial, spatial)}


def _flow_scheduler(invert: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, invert_sigmas=invert)


@pytest.mark.parametrize("make", [
    lambda: _flow_scheduler(False),
    lambda: _flow_scheduler(True),  # Mochi's: the timestep counts up, the model predicts x0 - noise
    lambda: __import__("diffusers").CogVideoXDDIMScheduler(prediction_type="v_prediction",
                                                          rescale_betas_zero_snr=True, timestep_spacing="trailing"),
    lambda: __import__("diffusers").CogVideoXDDIMScheduler(prediction_type="epsilon"),
], ids=["flow", "flow-inverted", "ddim-v", "ddim-eps"])
def test_objective_target_is_what_the_scheduler_integrates(make):
    """At a scheduled timestep, the scheduler's own step fed with the objective's target moves x_t to exactly the
    next scheduled noise level of the same x0 and noise: the training target is the pipeline's prediction."""
    scheduler = make()
    scheduler.set_timesteps(10)
    objective = Objective.from_scheduler(scheduler)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    i = 4
    t, t_next = scheduler.timesteps[i], scheduler.timesteps[i + 1]
    if objective.is_flow:
        level = scheduler.sigmas[i] if not objective.invert else 1 - scheduler.sigmas[i]
        level_next = scheduler.sigmas[i + 1] if not objective.invert else 1 - scheduler.sigmas[i + 1]
        xt, timestep, target = objective.draw(x0, noise, torch.full((2,), float(level)))
        torch.testing.assert_close(timestep, torch.full((2,), float(t)))
        want = (1 - level_next) * x0 + level_next * noise
        scheduler._step_index = None
        got = scheduler.step(target, t, xt, return_dict=False)[0]
    else:
        xt, timestep, target = objective.draw(x0, noise, torch.full((2,), (int(t) + 0.5) / 1000))
        assert timestep.tolist() == [int(t)] * 2
        torch.testing.assert_close(xt, scheduler.add_noise(x0, noise, timestep))
        want = scheduler.add_noise(x0, noise, torch.tensor([int(t_next)] * 2))
        got = scheduler.step(target, t, xt, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
