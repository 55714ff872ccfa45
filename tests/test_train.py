"""LoRA length-extension training on the tiny pipelines (CPU): loss, gradients, exact resume, export, DDP, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import radial_diffusers as rd
from lora_training import ConfigError, load_config
from lora_training.train import _adapter, latest_checkpoint, train, training_loss
from radial_diffusers.tiny import load_tiny
from train_helpers import checkpoint_lora, model_output, run_config, step_loss, write_clip

REPO = Path(__file__).resolve().parents[1]


_write_clip, _cfg, _loss, _model_output = write_clip, run_config, step_loss, model_output


def test_overfit_two_clips_loss_decreases_with_sparse_attention(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=40, batch_size=2, learning_rate=5e-3, warmup_steps=2,
               timestep_sampling="uniform", checkpoint_every=40, lr_scheduler="constant_with_warmup")
    train(cfg, progress=False)
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert report["attention"] == "radial" and report["density"] < 0.6 and report["geometry"] == [5, 4, 4]
    losses = report["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), losses


def test_lora_gradients_radial_equal_dense_masked_attention(data_dir, tmp_path):
    """Gradients through the block-sparse op's backward == autograd through SDPA with the same (token) mask."""
    from peft import LoraConfig

    from lora_training.data import LatentDataset, collate
    from radial_diffusers.processors import WanAttnProcessor

    cfg = _cfg(data_dir, tmp_path / "run", max_steps=1)
    train(cfg, progress=False)  # builds the cache
    batch = collate([LatentDataset(cfg.cache_path)[i] for i in range(2)])

    def grads(masked_mask=None):
        tr = load_tiny("tiny-wan", 0).transformer
        tr.requires_grad_(False)
        torch.manual_seed(0)
        tr.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=cfg.targets, init_lora_weights=False))
        state = None
        if masked_mask is None:
            state = rd.apply_radial_attention(tr, rd.RadialConfig(dense_layers=0, dense_steps=0, block_size=16))
        else:
            class Masked(WanAttnProcessor):
                def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                             rotary_emb=None):
                    return super().__call__(attn, hidden_states, encoder_hidden_states, masked_mask, rotary_emb)

            for block in tr.blocks:
                block.attn1.set_processor(Masked())
        loss = _loss(tr, cfg, batch)
        loss.backward()
        return {n: p.grad.clone() for n, p in tr.named_parameters() if p.grad is not None}, state

    sparse, state = grads()
    assert state.layout.density < 0.6 and sum(state.sparse_calls.values()) > 0
    token_mask = state.layout.token_mask()[None, None]
    dense, _ = grads(token_mask)
    assert sparse.keys() == dense.keys() and len(sparse) == 2 * 8 * 2
    for k in sparse:
        torch.testing.assert_close(sparse[k], dense[k], rtol=1e-4, atol=1e-6)


def test_kill_and_resume_matches_uninterrupted_run(data_dir, tmp_path):
    full = _cfg(data_dir, tmp_path / "full", max_steps=6, lora_dropout=0.1, ema_decay=0.9)
    train(full, progress=False)

    class Killed(Exception):
        pass

    def kill_at_5(step, loss):
        if step == 5:
            raise Killed

    cut = _cfg(data_dir, tmp_path / "cut", max_steps=6, lora_dropout=0.1, ema_decay=0.9, cache_dir=str(full.cache_path))
    with pytest.raises(Killed):
        train(cut, on_step_end=kill_at_5, progress=False)
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000004"
    train(cut, resume="latest", progress=False)
    a, b = checkpoint_lora(tmp_path / "full"), checkpoint_lora(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(tmp_path / "full" / "final" / "pytorch_lora_weights.safetensors"))
    eb = load_file(str(tmp_path / "cut" / "final" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    ra = json.loads((tmp_path / "full" / "train_report.json").read_text())["losses"]
    rb = json.loads((tmp_path / "cut" / "train_report.json").read_text())["losses"]
    assert ra[4:] == rb  # the resumed run replays steps 5-6 exactly
    ema_a = load_file(str(latest_checkpoint(tmp_path / "full") / "ema.safetensors"))
    ema_b = load_file(str(latest_checkpoint(tmp_path / "cut") / "ema.safetensors"))
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not torch.equal(ea[next(iter(ea))], a[next(iter(a))])  # the export holds the EMA, not the raw weights

    changed = _cfg(data_dir, tmp_path / "cut", max_steps=8, rank=8, lora_dropout=0.1, ema_decay=0.9,
                   cache_dir=str(full.cache_path))
    with pytest.raises(ConfigError, match="rank"):
        train(changed, resume="latest", progress=False)


def test_exported_lora_reproduces_trained_transformer(data_dir, tmp_path):
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    cfg = _cfg(data_dir, tmp_path / "run", max_steps=3, checkpoint_every=3)
    final = train(cfg, progress=False)
    x = torch.randn(1, 16, 3, 4, 4)
    text = torch.randn(1, 16, 32)
    t = torch.tensor([400.0])

    trained = load_tiny("tiny-wan", 0).transformer
    trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=cfg.targets))
    set_peft_model_state_dict(trained, checkpoint_lora(tmp_path / "run"))
    pipe = load_tiny("tiny-wan", 0)
    pipe.load_lora_weights(final, adapter_name="length")
    base = load_tiny("tiny-wan", 0).transformer
    with torch.no_grad():
        want = trained(x, t, text).sample
        got = pipe.transformer(x, t, text).sample
        plain = base(x, t, text).sample
    assert torch.equal(got, want)  # alpha and targets came through the metadata
    assert not torch.allclose(got, plain)


def test_i2v_and_hunyuan_training_steps_and_export_reload(data_dir, tmp_path):
    """Both train; the export loads into a fresh tiny pipeline and reproduces the trained transformer's output."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    from lora_training.data import LatentDataset, collate

    for name, kw in (("tiny-wan-i2v", {}), ("tiny-hunyuan", {"height": 32, "width": 32})):
        cfg = _cfg(data_dir, tmp_path / name, model=name, max_steps=2, **kw)
        final = train(cfg, progress=False)
        report = json.loads((tmp_path / name / "train_report.json").read_text())
        assert len(report["losses"]) == 2 and all(np.isfinite(report["losses"]))
        weights = load_file(str(final / "pytorch_lora_weights.safetensors"))
        assert weights and all(k.startswith("transformer.") for k in weights)
        if name == "tiny-hunyuan":  # the token refiner is not a default target
            assert not any("token_refiner" in k for k in weights)
            assert any("single_transformer_blocks" in k for k in weights)

        batch = collate([LatentDataset(cfg.cache_path)[0]])
        assert ("condition" in batch) == (name == "tiny-wan-i2v")
        trained = load_tiny(name, 0).transformer
        trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=cfg.targets))
        set_peft_model_state_dict(trained, checkpoint_lora(tmp_path / name))
        pipe = load_tiny(name, 0)
        pipe.load_lora_weights(final, adapter_name="length")
        got = _model_output(pipe.transformer, cfg, batch)
        assert torch.equal(got, _model_output(trained, cfg, batch))
        assert not torch.allclose(got, _model_output(load_tiny(name, 0).transformer, cfg, batch))


def test_broken_inputs(tmp_path, data_dir):
    d = tmp_path / "mixed"
    d.mkdir()
    for f in ("cat.mp4", "cat.txt"):
        (d / f).write_bytes((data_dir / f).read_bytes())
    (d / "broken.mp4").write_bytes(os.urandom(2000))
    (d / "broken.txt").write_text("noise")
    _write_clip(d / "nocaption.mp4", 2)
    _write_clip(d / "short.mp4", 3, frames=8)
    (d / "short.txt").write_text("too short")
    cfg = _cfg(d, tmp_path / "run", max_steps=1)
    train(cfg, progress=False)
    manifest = json.loads((cfg.cache_path / "manifest.json").read_text())
    assert len(manifest["samples"]) == 1
    reasons = " | ".join(s["reason"] for s in manifest["skipped"])
    assert len(manifest["skipped"]) == 3
    assert "unreadable" in reasons and "missing caption" in reasons and "too short" in reasons

    cache = str(cfg.cache_path)  # new runs (new output_dirs) on the first run's cache
    with pytest.raises(ValueError, match="differs in height"):  # the cache belongs to another geometry
        train(_cfg(d, tmp_path / "run-b", max_steps=1, height=32, cache_dir=cache), progress=False)
    (d / "nocaption.txt").write_text("now it has one")  # a new usable clip: the old cache is stale
    with pytest.raises(ValueError, match="the clips changed"):
        train(_cfg(d, tmp_path / "run-c", max_steps=1, cache_dir=cache), progress=False)
    with pytest.raises(ConfigError, match="num_frames"):
        _cfg(d, tmp_path / "x", num_frames=16)
    with pytest.raises(ConfigError, match="height"):
        _cfg(d, tmp_path / "x", height=72)
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'"):
        load_config({"model": "tiny-wan", "data_dir": "d", "output_dir": "o", "learning_rat": 1})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no"):
        train(_cfg(empty, tmp_path / "run2", max_steps=1), progress=False)


def test_yaml_config_and_cli(tmp_path, data_dir):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: out\nnum_frames: 17\nheight: 64\nwidth: 64\n"
        "rank: 4\nblock_size: 16\nmixed_precision: 'no'\nmax_steps: 2\ncheckpoint_every: 1\nkeep_checkpoints: 1\n"
    )
    from radial_diffusers.cli import main

    assert main(["train", str(cfg_path), "--set", "learning_rate=0.01"]) == 0
    out = tmp_path / "out"  # relative to the config file
    assert (out / "final" / "pytorch_lora_weights.safetensors").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]  # keep_checkpoints: 1
    assert json.loads((out / "config.json").read_text())["learning_rate"] == 0.01
    assert main(["train", str(cfg_path), "--set", "block_size=24"]) == 2


def test_fsdp_config_checks(monkeypatch):
    from lora_training import fsdp

    monkeypatch.setattr(fsdp, "fsdp_available", lambda: "torch 2.5 has no FSDP2 fully_shard (torch >= 2.7 needed)")
    with pytest.raises(ConfigError, match="torch >= 2.7"):
        load_config({"model": "tiny-wan", "data_dir": ".", "output_dir": "o", "distributed": "fsdp"},
                    check_paths=False)
    monkeypatch.undo()
    assert fsdp.fsdp_available() is None  # this torch has it
    with pytest.raises(ConfigError, match="distributed"):
        load_config({"model": "tiny-wan", "data_dir": ".", "output_dir": "o", "distributed": "zero3"},
                    check_paths=False)
    with pytest.raises(ConfigError, match="fsdp shards plain base weights"):
        load_config({"model": "tiny-wan", "data_dir": ".", "output_dir": "o", "distributed": "fsdp",
                     "quant": "int8-weight"}, check_paths=False)


EXAMPLE_CONFIGS = ("tiny_wan", "wan2.1_1.3b_2x", "wan2.1_14b_2x", "hunyuan_4x", "wan2.2_a14b_2x_low_noise",
                   "kandinsky5_lite_2x", "skyreels_v2_df_1.3b_2x", "cosmos_predict2.5_2b_2x")


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_example_configs_are_valid(name):
    cfg = load_config(REPO / "examples" / "train" / f"{name}.yaml", check_paths=False)  # templates: no data here
    assert cfg.attention == "radial" and cfg.radial_config().dense_steps == 0
    if name != "tiny_wan":
        assert cfg.rank == 128 and cfg.mixed_precision == "bf16"
        assert cfg.block_size == (64 if name.startswith("wan2.2") else 128)  # the official scripts' block sizes
    assert sorted(p.stem for p in (REPO / "examples" / "train").glob("*.yaml")) == sorted(EXAMPLE_CONFIGS)


def test_tiny_example_recipe_runs(tmp_path):
    subprocess.run([sys.executable, str(REPO / "examples" / "train" / "make_demo_clips.py"), str(tmp_path / "clips")],
                   check=True, capture_output=True)
    cfg = load_config(REPO / "examples" / "train" / "tiny_wan.yaml",
                      [f"data_dir={tmp_path / 'clips'}", f"output_dir={tmp_path / 'run'}", "max_steps=4"])
    final = train(cfg, progress=False)
    assert (final / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((tmp_path / "run" / "train_report.json").read_text())["density"] < 0.6


def test_train_step_bench_runs():
    from scripts import run_script

    out = run_script(REPO / "bench" / "train_step.py", "--frames", "33", "--height", "64", "--width", "64",
                     "--block-size", "16", "--steps", "1")
    assert "radial vs dense:" in out and "density 1.000" in out


def test_dfloat11_base_trains_like_bf16_base(tmp_path, data_dir):
    """A DFloat11-loaded base gives the same losses and LoRA weights as its BF16 original (bf16 autocast)."""
    from radial_diffusers.dfloat11 import compress

    df11 = tmp_path / "df11"
    compress(load_tiny("tiny-wan", 0).transformer, df11, cast_to_bf16=True, progress=False)
    runs = {}
    for name, extra in (("bf16", {}), ("df11", {"dfloat11": str(df11)})):
        cfg = _cfg(data_dir, tmp_path / name, max_steps=2, mixed_precision="bf16", **extra)
        train(cfg, progress=False)
        runs[name] = (json.loads((tmp_path / name / "train_report.json").read_text())["losses"], checkpoint_lora(tmp_path / name))
    (la, wa), (lb, wb) = runs["bf16"], runs["df11"]
    assert la == lb
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="mixed_precision"):
        _cfg(data_dir, tmp_path / "x", dfloat11=str(df11), mixed_precision="no")


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-wan-i2v"])
def test_periodic_validation_renders_a_video(tmp_path, data_dir, name):
    """Validation renders with the training LoRA (image-to-video from the first clip's first frame)."""
    cfg = _cfg(data_dir, tmp_path / "run", model=name, max_steps=2, validate_every=2, validation_frames=9,
               validation_steps=2)
    train(cfg, progress=False)
    video = tmp_path / "run" / "validation" / "step-0000002.mp4"
    assert video.exists()
    assert len(imageio.mimread(video, memtest=False)) == 9


def test_preprocess_only_builds_the_cache(tmp_path, data_dir, capsys):
    from lora_training.train import main as train_main

    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: out\nnum_frames: 17\nheight: 64\n"
                        "width: 64\nblock_size: 16\nmixed_precision: 'no'\n")
    capsys.readouterr()
    assert train_main([str(cfg_path), "--preprocess-only"]) == 0
    cache = tmp_path / "out" / "cache"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2 and not (tmp_path / "out" / "checkpoints").exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"radial-diffusers train: cache written to {cache}: 2 clip(s) in 1 shard(s), 0 skipped "
                     f"(listed in {cache / 'manifest.json'})"], lines
    assert train_main([str(cfg_path), "--preprocess-only"]) == 0  # a second time: reused, and it says so
    again = capsys.readouterr().out
    assert f"the cache in {cache} is up to date, nothing encoded: 2 clip(s)" in again, again


# ---------------------------------------------------------------- config checks before any model loads


@pytest.mark.parametrize("bad, match", [
    ({"data_dir": "MISSING"}, "data_dir: .* does not exist"),
    ({"manifest": "clips.jsonl"}, "manifest: .* does not exist"),
    ({"lr_scheduler": "cosin"}, "lr_scheduler: unknown schedule 'cosin'; did you mean 'cosine'"),
    ({"lr_scheduler": "piecewise_constant"}, "lr_scheduler"),
    ({"target_modules": "(to_q|to_k"}, "target_modules: not a valid regular expression"),
    ({"validation_frames": -3}, "validation_frames: must be >= 1"),
    ({"validation_frames": 7}, "validation_frames: got 7; Wan2.1 / Wan2.2 needs 4k\\+1 frames .*use 5 or 9"),
    ({"num_frames": 18}, "num_frames: got 18; Wan2.1 / Wan2.2 needs 4k\\+1 frames .*use 17 or 21"),
    ({"height": 60}, "height: got 60; Wan2.1 / Wan2.2 needs multiples of 16 \\(VAE 8x, patch 2\\); use 48 or 64"),
    ({"expert": "mid_noise"}, "expert: must be high_noise, low_noise or null"),
    ({"validation_frames": 0}, "validation_frames"),
    ({"guidance": -1.0}, "guidance: must be >= 0"),
    ({"guidance": float("inf")}, "guidance: must be a finite number"),
    ({"max_grad_norm": float("inf")}, "max_grad_norm: must be a finite number"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm"),
    ({"max_grad_norm": 0.0}, "max_grad_norm: must be > 0"),
])
def test_bad_values_fail_before_the_pipeline_loads(data_dir, tmp_path, monkeypatch, bad, match):
    import dataclasses

    import lora_training.train as train_mod

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the config was checked")

    monkeypatch.setattr(train_mod, "_load_pipeline", no_load)
    bad = {k: str(tmp_path / v) if v == "MISSING" else v for k, v in bad.items()}
    with pytest.raises(ConfigError, match=match):
        _cfg(bad.get("data_dir", data_dir), tmp_path / "run", **{k: v for k, v in bad.items() if k != "data_dir"})
    cfg = dataclasses.replace(_cfg(data_dir, tmp_path / "run"), **bad)  # built without validate()
    with pytest.raises(ConfigError, match=match):
        cfg.validate()
    with pytest.raises(ConfigError, match=match):
        train(cfg, progress=False)
    with pytest.raises(ConfigError, match=match):
        train_mod.preprocess(cfg)


def test_config_checks_cover_schedulers_paths_and_cli(data_dir, tmp_path, capsys):
    from diffusers.optimization import SchedulerType

    from lora_training.config import LR_SCHEDULERS
    from lora_training.train import main as train_main

    assert set(LR_SCHEDULERS) | {"piecewise_constant"} == {t.value for t in SchedulerType}
    for name in LR_SCHEDULERS:
        assert _cfg(data_dir, tmp_path, lr_scheduler=name).lr_scheduler == name
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": str(data_dir / "cat.mp4"), "caption": "a cat"}) + "\n")
    assert _cfg(data_dir, tmp_path, manifest=str(manifest)).manifest == str(manifest)
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(ConfigError, match="manifest: .*unknown extension"):
        _cfg(data_dir, tmp_path, manifest=str(tmp_path / "m.txt"))
    with pytest.raises(ConfigError, match="data_dir: .* is not a folder"):
        _cfg(manifest, tmp_path)
    assert _cfg(data_dir, tmp_path, target_modules=["to_q", "to_k"]).targets == ["to_q", "to_k"]
    assert load_config({"model": "tiny-wan", "data_dir": str(tmp_path / "none"), "output_dir": "o"},
                       check_paths=False).data_dir == str(tmp_path / "none")

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: out\n")
    capsys.readouterr()
    assert train_main([str(cfg_path), "--set", "target_modules=(to_q"]) == 2
    err = capsys.readouterr().err
    assert "error: target_modules: not a valid regular expression" in err and "Traceback" not in err


# ---------------------------------------------------------------- EMA


def test_ema_decay_warms_up_as_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    from lora_training.train import ema_decay_at

    for decay in (0.9, 0.999):
        ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=decay)
        for n in range(1, 200):
            assert ema_decay_at(decay, n) == ema.get_decay(n), (decay, n)  # EMAModel.step n calls get_decay(n)
    assert ema_decay_at(0.999, 1) == 0.0 and ema_decay_at(0.999, 3) == 0.25 and ema_decay_at(0.9, 10**6) == 0.9


def test_short_ema_run_exports_and_validates_with_warmed_up_ema(data_dir, tmp_path, monkeypatch):
    """3 steps at ema_decay 0.999: the export is the warmed-up EMA of the raw weights (not ~ the init), validation
    renders with it, and the raw weights continue untouched by the swap."""
    from peft.utils import get_peft_model_state_dict

    import lora_training.train as train_mod

    rendered = {}

    def fake_validate(adapter, cfg, step, device, first_video, write=True):
        rendered[step] = {k: v.detach().float().clone()
                          for k, v in get_peft_model_state_dict(adapter.transformer).items()}

    monkeypatch.setattr(train_mod, "_validate", fake_validate)
    cfg = _cfg(data_dir, tmp_path / "ema", max_steps=3, checkpoint_every=1, keep_checkpoints=3, ema_decay=0.999,
               validate_every=1)
    final = train(cfg, progress=False)
    raw = [load_file(str(tmp_path / "ema" / "checkpoints" / f"step-{n:07d}" / "lora.safetensors")) for n in (1, 2, 3)]
    export = {k.removeprefix("transformer."): v
              for k, v in load_file(str(final / "pytorch_lora_weights.safetensors")).items()}
    assert export.keys() == raw[0].keys()
    ema = dict(raw[0])  # decay 0 after step 1
    for n, weights in ((2, raw[1]), (3, raw[2])):
        ema = {k: torch.lerp(ema[k], weights[k], 1 - (1 + (n - 1)) / (10 + (n - 1))) for k in ema}
        torch.testing.assert_close(rendered[n], ema, rtol=0, atol=1e-7)
    torch.testing.assert_close(export, ema, rtol=0, atol=1e-7)
    b_keys = [k for k in export if "lora_B" in k]  # PEFT starts lora_B at zero: the change from the init is B itself
    moved = torch.cat([export[k].flatten() for k in b_keys]).norm()
    trained = torch.cat([raw[2][k].flatten() for k in b_keys]).norm()
    assert trained > 0 and moved > 0.5 * trained, (moved, trained)
    assert not torch.equal(export[b_keys[0]], raw[2][b_keys[0]])

    plain = _cfg(data_dir, tmp_path / "plain", max_steps=3, checkpoint_every=3, ema_decay=0.999,
                 cache_dir=str(cfg.cache_path))
    train(plain, progress=False)
    unswapped = checkpoint_lora(tmp_path / "plain")
    assert all(torch.equal(unswapped[k], raw[2][k]) for k in unswapped)  # validation swapped the weights back


# ---------------------------------------------------------------- resume, checkpoints, cache


def test_resume_refuses_another_process_count(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=1, checkpoint_every=1)
    train(cfg, progress=False)
    state_path = latest_checkpoint(tmp_path / "run") / "state.json"
    state = json.loads(state_path.read_text())
    assert state["processes"] == 1 and state["step"] == 1
    state["processes"] = 2
    state_path.write_text(json.dumps(state))
    longer = _cfg(data_dir, tmp_path / "run", max_steps=2, checkpoint_every=1)
    with pytest.raises(ConfigError, match="2 process.*this one has 1; the data order and the noise"):
        train(longer, resume="latest", progress=False)


def test_a_new_run_refuses_an_output_dir_with_another_runs_checkpoints(data_dir, tmp_path):
    """Without ``resume`` a second run into a used output_dir would rotate its own new checkpoints away among the old
    ones (and ``--resume latest`` would continue the old run): refused before anything loads or changes."""
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=2, checkpoint_every=1)
    final = train(cfg, progress=False)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(ConfigError, match=r"already holds a run's checkpoints \(the newest step-0000002\).*"
                                          r"--resume latest.*another output_dir"):
        train(cfg, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    for step in (tmp_path / "run" / "checkpoints").glob("step-*"):
        shutil.rmtree(step)
    with pytest.raises(ConfigError, match=r"already holds a run's exported LoRA \(final/\)"):
        train(cfg, progress=False)
    assert final.is_dir()


def test_resume_and_config_paths_say_what_is_wrong(data_dir, tmp_path, capsys):
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=1)
    train(cfg, resume="latest", progress=False)  # nothing to resume (a first run, or a mistyped output_dir): said
    err = capsys.readouterr().err
    assert "--resume latest: no checkpoint in" in err and "so this starts a new run" in err
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"resume: .*nothere does not exist; give 'latest' or a checkpoint folder"):
        train(cfg, resume=str(tmp_path / "nothere"), progress=False)
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match=r"half is not a complete checkpoint \(no state.json\)"):
        train(cfg, resume=str(tmp_path / "half"), progress=False)
    with pytest.raises(ConfigError, match=r"config file .*half' is a folder, not a YAML / JSON file"):
        load_config(tmp_path / "half")


def test_clips_default_to_the_familys_frame_rate():
    """fps "auto": HunyuanVideo's clips at 24 fps (the motion speed it learned), LTX-Video's RoPE frame rate with
    them; a number or null as given."""
    from lora_training.train import _load_pipeline

    base = {"data_dir": ".", "output_dir": "o"}
    for model, fps in (("tiny-hunyuan", 24.0), ("tiny-ltx", 24.0), ("tiny-wan", 16.0)):
        cfg = load_config({**base, "model": model}, check_paths=False)
        assert cfg.fps == "auto"
        assert _adapter(cfg, _load_pipeline(cfg, torch.float32))[0].options.fps == fps
    assert load_config({**base, "model": "tiny-wan"}, ["fps=12"], check_paths=False).fps == 12.0
    assert load_config({**base, "model": "tiny-wan"}, ["fps=null"], check_paths=False).fps is None
    with pytest.raises(ConfigError, match=r'fps: must be a number > 0, "auto"'):
        load_config({**base, "model": "tiny-wan"}, ["fps=fast"], check_paths=False)
    with pytest.raises(ConfigError, match="fps: must be > 0"):
        load_config({**base, "model": "tiny-wan", "fps": -3}, check_paths=False)


def test_a_step_the_loss_scaler_skips_leaves_the_lr_schedule_where_it_was(data_dir, tmp_path, monkeypatch):
    """fp16's GradScaler skips an optimizer step whose gradients overflow; the LR schedule follows the steps taken
    (as an Accelerate-prepared scheduler does)."""
    from accelerate.optimizer import AcceleratedOptimizer

    calls = []

    def skipped(self):
        calls.append(None)
        return len(calls) == 2  # the second optimizer step overflowed

    monkeypatch.setattr(AcceleratedOptimizer, "step_was_skipped", property(skipped))
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=3, checkpoint_every=3, warmup_steps=10,
               lr_scheduler="constant_with_warmup")
    train(cfg, progress=False)
    last = torch.load(latest_checkpoint(tmp_path / "run") / "scheduler.pt", weights_only=True)["last_epoch"]
    assert len(calls) == 3 and last == 2


def test_the_package_entry_trains_however_the_module_was_imported():
    """``lora_training.train(cfg)`` (the README's call) is the function until ``lora_training.train`` the module is
    imported, then that module, which calls it."""
    import lora_training
    import lora_training.train as module

    assert lora_training.train is module and callable(module)
    calls = []
    original = module.train
    module.train = lambda *a, **k: calls.append((a, k)) or "done"
    try:
        assert lora_training.train("cfg", resume="latest") == "done"
    finally:
        module.train = original
    assert calls == [(("cfg",), {"resume": "latest"})]


def test_checkpoint_overwrite_survives_a_crash_between_renames(data_dir, tmp_path, monkeypatch):
    """Saving a step whose folder exists renames the old one aside first: a crash before the new one is in place
    leaves the old checkpoint on disk."""
    cfg = _cfg(data_dir, tmp_path / "run", max_steps=1, checkpoint_every=1)
    train(cfg, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    before = load_file(str(ckpt / "lora.safetensors"))
    real_replace = os.replace

    def crash(src, dst):
        if Path(src).name.endswith(".partial") and Path(dst) == ckpt:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    import lora_training.train as train_mod

    monkeypatch.setattr(train_mod, "_check_new_output_dir", lambda out: None)  # a second run saving step 1 again
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        train(_cfg(data_dir, tmp_path / "run", max_steps=1, checkpoint_every=1, seed=4), progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    kept = [p for p in (ckpt, ckpt.with_name(".step-0000001.old")) if (p / "lora.safetensors").exists()]
    assert kept, list(ckpt.parent.iterdir())
    after = load_file(str(kept[0] / "lora.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((kept[0] / "state.json").read_text())["config"]["seed"] == 3


def test_cache_records_encode_dtype(data_dir, tmp_path):
    from lora_training.train import preprocess

    fp32 = _cfg(data_dir, tmp_path / "run")
    assert preprocess(fp32)["spec"]["dtype"] == "float32"
    bf16 = _cfg(data_dir, tmp_path / "run", mixed_precision="bf16")
    with pytest.raises(ValueError, match="it differs in dtype"):  # the fp32 cache is not reused under bf16
        preprocess(bf16)
    other = _cfg(data_dir, tmp_path / "run", mixed_precision="bf16", cache_dir=str(tmp_path / "bf16"))
    assert preprocess(other)["spec"]["dtype"] == "bfloat16"


def test_cache_shards_hold_i2v_conditions(data_dir, tmp_path, monkeypatch):
    """With 2 samples per shard, 3 clips go to 2 shards and read back exactly as from a single shard."""
    import lora_training.data as data_mod
    from lora_training.data import LatentDataset, build_cache
    from lora_training.train import _spec

    clips = tmp_path / "clips"
    clips.mkdir()
    for f in ("cat.mp4", "cat.txt", "dog.mp4", "dog.txt"):
        (clips / f).write_bytes((data_dir / f).read_bytes())
    _write_clip(clips / "owl.mp4", 5)
    (clips / "owl.txt").write_text("an owl at night")
    cfg = _cfg(clips, tmp_path / "run", model="tiny-wan-i2v", num_frames=5, height=32, width=32)
    adapter, _ = _adapter(cfg, load_tiny("tiny-wan-i2v", 0))
    single = build_cache(adapter, _spec(cfg, adapter), clips, tmp_path / "one", progress=False)
    monkeypatch.setattr(data_mod, "SHARD_SAMPLES", 2)
    sharded = build_cache(adapter, _spec(cfg, adapter), clips, tmp_path / "two", progress=False)
    assert [(s["shard"], s["index"]) for s in sharded["samples"]] == [
        ("shard-00000.safetensors", 0), ("shard-00000.safetensors", 1), ("shard-00001.safetensors", 0)]
    assert sorted(p.name for p in (tmp_path / "two").glob("shard-*")) == ["shard-00000.safetensors",
                                                                         "shard-00001.safetensors"]
    assert [s["video"] for s in sharded["samples"]] == [s["video"] for s in single["samples"]]
    one, two = LatentDataset(tmp_path / "one"), LatentDataset(tmp_path / "two")
    for i in range(3):
        a, b = one[i], two[i]
        assert a.keys() == b.keys() == {"latents", "prompt_embeds", "condition", "image_embeds"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(two[0]["condition"], two[2]["condition"])
    assert not torch.equal(two[1]["image_embeds"], two[2]["image_embeds"])


# ---------------------------------------------------------------- noise levels and LR schedule


def test_loss_weight_gives_the_weighted_mean_of_the_squared_error():
    """``batch["loss_weight"]``: ones give the plain mean; a 0/1 mask the mean over its region; ``1 + 7 * mask`` the
    two sums combined (the same noise and levels in every call: one generator seed)."""
    from types import SimpleNamespace

    from lora_training.objective import Objective
    from radial_diffusers.toy.model import toy_wan_scheduler
    from radial_diffusers.training_adapters import TrainingAdapter

    class Adapter:  # predicts half the noisy input: a fixed, non-trivial error against the target
        noise_levels = TrainingAdapter.noise_levels  # one level per sample

        def noise_range(self):
            return 0.0, 1.0

        def predict(self, transformer, xt, timestep, batch, device, dtype):
            return transformer(xt)

    cfg = SimpleNamespace(timestep_sampling="logit_normal", logit_mean=0.0, logit_std=1.0)
    objective = Objective.from_scheduler(toy_wan_scheduler())
    latents = torch.randn(2, 4, 3, 5, 6, generator=torch.Generator().manual_seed(1))

    def loss(weight=None):
        batch = {"latents": latents} if weight is None else {"latents": latents, "loss_weight": weight}
        return training_loss(lambda x: 0.5 * x, Adapter(), objective, batch, cfg, 3.0,
                             torch.Generator().manual_seed(7), torch.device("cpu"), torch.float32)

    mask = (torch.rand(2, 1, 3, 5, 6, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    plain, inside = loss(), loss(mask)
    torch.testing.assert_close(loss(torch.ones(2, 1, 3, 5, 6)), plain)
    n, k = mask.numel(), mask.sum()  # per channel: the weight broadcasts over the 4 channels
    torch.testing.assert_close(loss(1 + 7 * mask), (plain * n + 7 * inside * k) / (n + 7 * k))
    assert not torch.allclose(inside, plain)


def test_sigma_sampling_moments_and_shift(data_dir, tmp_path):
    import math
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from lora_training.objective import flow_shift, sample_levels

    def levels(cfg, n, seed, shift, lo=0.0, hi=1.0):
        return sample_levels(n, torch.Generator().manual_seed(seed), sampling=cfg.timestep_sampling,
                             logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, shift=shift, lo=lo, hi=hi)

    n = 200_000
    uniform = _cfg(data_dir, tmp_path, timestep_sampling="uniform")
    s = levels(uniform, n, 0, 1.0)
    assert s.min() >= 0 and s.max() <= 1
    assert abs(s.mean() - 0.5) < 0.005 and abs(s.var() - 1 / 12) < 0.002
    logit = _cfg(data_dir, tmp_path, logit_mean=0.5, logit_std=0.8)
    z = torch.logit(levels(logit, n, 0, 1.0).double())
    assert abs(z.mean() - 0.5) < 0.01 and abs(z.std() - 0.8) < 0.01

    for cfg in (uniform, logit):  # shift s / (1 + (shift - 1) s) of the same draws
        u = levels(cfg, 1000, 1, 1.0)
        torch.testing.assert_close(levels(cfg, 1000, 1, 3.0), 3 * u / (1 + 2 * u))
    for mean, shift, want in ((0.0, 3.0, 0.75), (0.0, 5.0, 2.5 / 3), (math.log(3), 3.0, 0.9)):
        point = _cfg(data_dir, tmp_path, logit_mean=mean, logit_std=1e-12)  # s = sigmoid(mean)
        got = levels(point, 4, 0, shift)
        torch.testing.assert_close(got, torch.full((4,), want), rtol=0, atol=1e-6)

    # an expert's range: the same distribution truncated (a Wan2.2 A14B expert sees only its noise levels)
    for cfg in (uniform, logit):
        full = levels(cfg, n, 2, 3.0)
        for lo, hi in ((0.875, 1.0), (0.0, 0.875)):
            part = levels(cfg, n, 3, 3.0, lo, hi)
            assert part.min() >= lo and part.max() <= hi
            inside = full[(full >= lo) & (full <= hi)]
            for q in (0.1, 0.5, 0.9):  # quantiles of the truncated draw = those of the full draw inside the range
                assert abs(torch.quantile(part, q) - torch.quantile(inside, q)) < 0.01

    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    euler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    assert flow_shift(None, unipc) == 5.0  # Wan: flow_shift
    assert flow_shift(None, euler) == 7.0  # HunyuanVideo: shift
    assert flow_shift(None, SimpleNamespace(config={})) == 1.0
    assert flow_shift(2.0, unipc) == 2.0


def _cosine_rates(lr: float, warmup: int, total: int) -> list[float]:
    """Diffusers' warmup + cosine rate after each of the steps 1..total (index 0: after step 1)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    reference = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=total)
    rates = []
    for _ in range(total):
        optimizer.step()
        reference.step()
        rates.append(reference.get_last_lr()[0])
    return rates


def test_lr_schedule_is_warmup_then_cosine(data_dir, tmp_path):
    import math

    cfg = _cfg(data_dir, tmp_path / "run", max_steps=5, warmup_steps=2, learning_rate=1e-3, checkpoint_every=1,
               keep_checkpoints=5)
    assert cfg.lr_scheduler == "cosine"
    train(cfg, progress=False)
    for step, want in enumerate(_cosine_rates(1e-3, 2, 5), start=1):
        ckpt = tmp_path / "run" / "checkpoints" / f"step-{step:07d}"
        used = torch.load(ckpt / "scheduler.pt", weights_only=True)
        lr = torch.load(ckpt / "optimizer.pt", weights_only=True)["param_groups"][0]["lr"]
        hand = 1e-3 * (step / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 3)))
        assert used["last_epoch"] == step and used["_last_lr"] == [want]
        assert lr == pytest.approx(hand, rel=1e-12, abs=1e-18) and lr == want


def test_missing_tensorboard_warns_once(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    train(_cfg(data_dir, tmp_path / "run", max_steps=1, log_with="tensorboard"), progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "tensorboard" in line]
    assert len(lines) == 1 and "not installed" in lines[0], lines


# ---------------------------------------------------------------- stopping early, schedule changes, forks


def _optimizer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "optimizer.pt", weights_only=True)


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and len(a["state"]) > 0
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sa.keys() == sb.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(sa[k], sb[k]) for k in sa), i


def test_stop_at_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    """--stop-at keeps the schedule of max_steps: stopping at step 2 and resuming ends on the same bits (every LoRA
    tensor, the AdamW moments, the LR schedule, the EMA and the export) as a run that never stopped."""
    kw = dict(max_steps=5, warmup_steps=2, checkpoint_every=5, ema_decay=0.9, lr_scheduler="cosine")
    full = _cfg(data_dir, tmp_path / "full", **kw)
    train(full, progress=False)
    cut = _cfg(data_dir, tmp_path / "cut", cache_dir=str(full.cache_path), **kw)
    stopped = train(cut, stop_at=2, progress=False)
    assert stopped == tmp_path / "cut" / "checkpoints" / "step-0000002" and stopped.is_dir()
    assert not (tmp_path / "cut" / "final").exists()  # nothing exported: the run is not finished
    report = json.loads((tmp_path / "cut" / "train_report.json").read_text())
    assert report["stopped_early"] and report["lora"] is None and report["max_steps"] == 5
    assert torch.load(stopped / "scheduler.pt", weights_only=True)["last_epoch"] == 2

    final = train(cut, resume="latest", progress=False)
    a, b = (latest_checkpoint(tmp_path / run) for run in ("full", "cut"))
    assert a.name == b.name == "step-0000005"
    la, lb = load_file(str(a / "lora.safetensors")), load_file(str(b / "lora.safetensors"))
    assert la.keys() == lb.keys() and len(la) == 32 and all(torch.equal(la[k], lb[k]) for k in la)
    _assert_same_optimizer_state(_optimizer_state(a), _optimizer_state(b))
    assert torch.load(a / "scheduler.pt", weights_only=True) == torch.load(b / "scheduler.pt", weights_only=True)
    ea, eb = load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    xa = load_file(str(tmp_path / "full" / "final" / "pytorch_lora_weights.safetensors"))
    xb = load_file(str(final / "pytorch_lora_weights.safetensors"))
    assert xa.keys() == xb.keys() and all(torch.equal(xa[k], xb[k]) for k in xa)

    with pytest.raises(ConfigError, match="--stop-at 9 is past max_steps 5"):
        train(cut, stop_at=9, progress=False)
    with pytest.raises(ConfigError, match="--stop-at 0: give an optimizer step >= 1"):
        train(cut, stop_at=0, progress=False)
    with pytest.raises(ConfigError, match="--stop-at 5: the resumed run is already at step 5"):
        train(cut, resume="latest", stop_at=5, progress=False)


def test_resume_refuses_a_schedule_change_unless_allowed(data_dir, tmp_path, monkeypatch, capsys):
    import math

    import lora_training.train as train_mod
    from radial_diffusers.cli import main

    out = tmp_path / "run"
    train(_cfg(data_dir, out, max_steps=2, checkpoint_every=1, keep_checkpoints=5), progress=False)
    longer = _cfg(data_dir, out, max_steps=4, checkpoint_every=1, keep_checkpoints=5)
    real_load = train_mod._load_pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the resume was checked")

    monkeypatch.setattr(train_mod, "_load_pipeline", no_load)
    # the run is finished: resuming it as it is trains nothing, and its report (with the losses) stays as it was
    report = (out / "train_report.json").read_text()
    with pytest.raises(ConfigError, match=r"is finished: step-0000002 is at max_steps 2 .*--set max_steps=N "
                       r"--allow-schedule-change"):
        train(_cfg(data_dir, out, max_steps=2, checkpoint_every=1, keep_checkpoints=5), resume="latest",
              progress=False)
    assert (out / "train_report.json").read_text() == report and len(json.loads(report)["losses"]) == 2
    # an older checkpoint of a finished run is a fork, not refused (its later checkpoints and export are moved aside)
    fork = _cfg(data_dir, tmp_path / "fork", max_steps=2, checkpoint_every=1, keep_checkpoints=5)
    monkeypatch.setattr(train_mod, "_load_pipeline", real_load)
    train(fork, progress=False)
    once = _cfg(data_dir, tmp_path / "fork", max_steps=1, checkpoint_every=1, keep_checkpoints=5)
    train(once, resume=str(tmp_path / "fork" / "checkpoints" / "step-0000001"), allow_schedule_change=True,
          progress=False)
    assert (tmp_path / "fork" / "checkpoints" / "superseded-after-step-0000001").is_dir()
    monkeypatch.setattr(train_mod, "_load_pipeline", no_load)
    with pytest.raises(ConfigError, match=r"would change the learning-rate schedule \(max_steps 2 -> 4\).*"
                       r"--set max_steps=2.*--stop-at N.*--allow-schedule-change"):
        train(longer, resume="latest", progress=False)
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(longer.to_dict()))
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-schedule-change" in err and "Traceback" not in err, err
    assert "--allow-schedule-change" in _help(["train", "--help"]) and "--stop-at" in _help(["train", "--help"])

    # allowed: the new schedule (4 steps, a new base rate) takes over from step 2 on
    monkeypatch.setattr(train_mod, "_load_pipeline", real_load)
    faster = _cfg(data_dir, out, max_steps=4, checkpoint_every=1, keep_checkpoints=5, learning_rate=4e-3)
    train(faster, resume="latest", allow_schedule_change=True, progress=False)
    rates = _cosine_rates(4e-3, 1, 4)
    for step in (3, 4):
        ckpt = out / "checkpoints" / f"step-{step:07d}"
        used = torch.load(ckpt / "scheduler.pt", weights_only=True)
        lr = _optimizer_state(ckpt)["param_groups"][0]["lr"]
        assert used["base_lrs"] == [4e-3] and used["last_epoch"] == step
        hand = 4e-3 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 3))
        assert lr == rates[step - 1] == pytest.approx(hand, rel=1e-12)


def test_resume_with_other_default_targets_names_the_fix(data_dir, tmp_path):
    """A run resumed where the family's default LoRA targets changed since it started (Mochi's did): one error naming
    target_modules and the fix, not PEFT's key list."""
    from radial_diffusers.families import get_family

    out = tmp_path / "run"
    train(_cfg(data_dir, out, max_steps=2, checkpoint_every=1), stop_at=1, progress=False)
    family = get_family("wan")
    default = family.lora_targets
    object.__setattr__(family, "lora_targets", r".*\.(to_q|to_k)")  # as if the default had changed
    try:
        with pytest.raises(ConfigError, match=r"step-0000001: its LoRA covers other modules than this run's "
                                              r"target_modules .*--set target_modules="):
            train(_cfg(data_dir, out, max_steps=2, checkpoint_every=1), resume="latest", progress=False)
    finally:
        object.__setattr__(family, "lora_targets", default)


def _help(argv: list[str]) -> str:
    import contextlib
    import io

    from radial_diffusers.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


def test_resume_from_an_older_checkpoint_forks_the_run(data_dir, tmp_path, capsys):
    """Resuming step-2 of a run that reached step-4 moves step-3, step-4 and the export aside: a fork that stops
    at step 3 is then the latest, and resuming it replays the old step 4 exactly."""
    out = tmp_path / "run"
    cfg = _cfg(data_dir, out, max_steps=4, checkpoint_every=1, keep_checkpoints=10)
    train(cfg, progress=False)
    root = out / "checkpoints"
    old = {n: load_file(str(root / f"step-000000{n}" / "lora.safetensors")) for n in (3, 4)}
    old_export = load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))
    capsys.readouterr()
    train(cfg, resume=str(root / "step-0000002"), stop_at=3, progress=False)
    assert "forks the run" in capsys.readouterr().err
    assert latest_checkpoint(out) == root / "step-0000003"
    aside = root / "superseded-after-step-0000002"
    assert sorted(p.name for p in aside.iterdir()) == ["final", "step-0000003", "step-0000004"]
    for n in (3, 4):
        moved = load_file(str(aside / f"step-000000{n}" / "lora.safetensors"))
        assert all(torch.equal(moved[k], old[n][k]) for k in old[n])
    moved = load_file(str(aside / "final" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(moved[k], old_export[k]) for k in old_export)

    train(cfg, resume="latest", progress=False)
    assert latest_checkpoint(out) == root / "step-0000004"
    new = checkpoint_lora(out)
    assert new.keys() == old[4].keys() and all(torch.equal(new[k], old[4][k]) for k in new)
    train(cfg, resume=str(root / "step-0000002"), stop_at=3, progress=False)  # a second fork: its own folder
    assert (root / "superseded-after-step-0000002-2" / "step-0000004").is_dir()


# ---------------------------------------------------------------- --set and YAML values


def test_set_and_yaml_take_yaml_11_words_as_written(data_dir, tmp_path):
    """`no`, `off`, `yes`, `on` are text for text options and booleans for yes/no options, `1e-4` is a number,
    `010` is ten, a prompt keeps `:` and `#`, in --set and in config files."""
    base = {"model": "tiny-wan", "data_dir": str(data_dir), "output_dir": str(tmp_path / "o")}
    cfg = load_config(base, ["mixed_precision=no", "learning_rate=1e-4", "seed=010", "gradient_checkpointing=off",
                             "sink=yes", "validation_prompt=a cat: dancing #1", "log_with=null",
                             "target_modules=[to_q, to_k]", "adjacent='half'"])
    assert (cfg.mixed_precision, cfg.learning_rate, cfg.seed, cfg.gradient_checkpointing, cfg.sink) == \
        ("no", 1e-4, 10, False, True)
    assert cfg.validation_prompt == "a cat: dancing #1" and cfg.log_with is None
    assert cfg.target_modules == ["to_q", "to_k"] and cfg.adjacent == "half"
    assert load_config(base, ["validation_prompt=yes"]).validation_prompt == "yes"
    with pytest.raises(ConfigError, match="mixed_precision: must be one of no, fp16, bf16; got 'off'"):
        load_config(base, ["mixed_precision=off"])
    with pytest.raises(ConfigError, match="seed: expected int, got 'ten'"):
        load_config(base, ["seed=ten"])
    path = tmp_path / "run.yaml"
    path.write_text(f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: o\nmixed_precision: no\n"
                    "learning_rate: 2e-4\ngradient_checkpointing: no\nvalidation_prompt: on the beach\n")
    cfg = load_config(path)
    assert (cfg.mixed_precision, cfg.learning_rate, cfg.gradient_checkpointing, cfg.validation_prompt) == \
        ("no", 2e-4, False, "on the beach")


# ---------------------------------------------------------------- unwritable output folders


@pytest.fixture
def locked(tmp_path):
    """Make a folder read-only for this user (chmod), or immutable where the tests run as root (chattr +i)."""
    done = []

    def lock(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no folder can be made unwritable")
        done.append(folder)
        return folder

    yield lock
    for folder in done:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_unwritable_output_fails_before_the_model_loads(data_dir, tmp_path, monkeypatch, locked, capsys):
    import lora_training.train as train_mod
    from radial_diffusers.cli import main

    ready = _cfg(data_dir, tmp_path / "ready", max_steps=1)
    train_mod.preprocess(ready)  # a complete cache

    def no_load(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the output folders were checked")

    monkeypatch.setattr(train_mod, "_load_pipeline", no_load)
    ro = locked(tmp_path / "ro")
    with pytest.raises(ConfigError, match=f"output_dir {ro}/run/checkpoints: cannot write in {ro} .*"
                       "--set output_dir=PATH"):
        _cfg(data_dir, ro / "run")  # not made yet: where it would be made
    with pytest.raises(ConfigError, match=f"output_dir {ro}/checkpoints: cannot write in {ro} "):
        _cfg(data_dir, ro)
    (tmp_path / "run2").mkdir()
    ckpts = locked(tmp_path / "run2" / "checkpoints")
    with pytest.raises(ConfigError, match=f"output_dir {ckpts}: cannot write in {ckpts} "):
        _cfg(data_dir, tmp_path / "run2")
    with pytest.raises(ConfigError, match=f"cache_dir {ro}/cache/manifest.json: cannot write in {ro} .*"
                       "--set cache_dir=PATH"):
        _cfg(data_dir, tmp_path / "run3", cache_dir=str(ro / "cache"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="output_dir .*: .*file is a file, not a folder"):
        _cfg(data_dir, tmp_path / "file" / "run")
    (tmp_path / "shelf" / "run").mkdir(parents=True)
    locked(tmp_path / "shelf")
    _cfg(data_dir, tmp_path / "shelf" / "run")  # the run writes only inside its output_dir
    locked(ready.cache_path)  # a complete cache is only read: a read-only one is fine
    _cfg(data_dir, tmp_path / "run4", cache_dir=str(ready.cache_path))

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: {ro}\n")
    capsys.readouterr()
    assert main(["train", str(cfg_path)]) == 2
    assert main(["train", str(cfg_path), "--preprocess-only"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"radial-diffusers train: error: output_dir {ro}/checkpoints: "
                                                 f"cannot write in {ro} ") for line in err), err
