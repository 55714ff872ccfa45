"""LoRA length-extension training on the tiny pipelines (CPU): loss, gradients, exact resume, export, DDP, errors."""

from __future__ import annotations

import json
import os
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
from lora_training.train import flow_matching_loss, latest_checkpoint, train
from radial_diffusers.tiny import load_tiny

REPO = Path(__file__).resolve().parents[1]


def _write_clip(path: Path, seed: int, frames: int = 24, size=(64, 80)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (8, 10, 3)).astype(np.uint8)
    video = []
    for t in range(frames):  # a drifting coarse pattern: genuine motion, compresses well
        img = np.kron(np.roll(base, t // 3, axis=1), np.ones((size[0] // 8, size[1] // 10, 1), np.uint8))
        video.append(img)
    imageio.mimwrite(path, video, fps=16, macro_block_size=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    _write_clip(d / "cat.mp4", 0)
    (d / "cat.txt").write_text("a cat dancing on the beach")
    _write_clip(d / "dog.mp4", 1)
    (d / "dog.txt").write_text("a dog running in the snow")
    return d


def _cfg(data_dir, out, **kw):
    base = dict(model="tiny-wan", data_dir=str(data_dir), output_dir=str(out), num_frames=17, height=64, width=64,
                fps=16, rank=4, alpha=8, block_size=16, mixed_precision="no", learning_rate=2e-3, max_steps=4,
                warmup_steps=1, checkpoint_every=2, gradient_checkpointing=True, seed=3)
    base.update(kw)
    return load_config(base)


def _lora(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out_dir) / "lora.safetensors"))


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
        loss = flow_matching_loss(tr, batch, cfg, "wan", 3.0, torch.Generator().manual_seed(5), torch.device("cpu"),
                                  torch.float32)
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
    a, b = _lora(tmp_path / "full"), _lora(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(tmp_path / "full" / "final" / "pytorch_lora_weights.safetensors"))
    eb = load_file(str(tmp_path / "cut" / "final" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    ra = json.loads((tmp_path / "full" / "train_report.json").read_text())["losses"]
    rb = json.loads((tmp_path / "cut" / "train_report.json").read_text())["losses"]
    assert ra[4:] == rb  # the resumed run replays steps 5-6 exactly

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
    set_peft_model_state_dict(trained, _lora(tmp_path / "run"))
    pipe = load_tiny("tiny-wan", 0)
    pipe.load_lora_weights(final, adapter_name="length")
    base = load_tiny("tiny-wan", 0).transformer
    with torch.no_grad():
        want = trained(x, t, text).sample
        got = pipe.transformer(x, t, text).sample
        plain = base(x, t, text).sample
    assert torch.equal(got, want)  # alpha and targets came through the metadata
    assert not torch.allclose(got, plain)


def test_i2v_and_hunyuan_training_steps(data_dir, tmp_path):
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

    with pytest.raises(ValueError, match="differs in height"):  # the cache belongs to another geometry
        train(_cfg(d, tmp_path / "run", max_steps=1, height=32), progress=False)
    (d / "nocaption.txt").write_text("now it has one")  # a new usable clip: the old cache is stale
    with pytest.raises(ValueError, match="the clips changed"):
        train(_cfg(d, tmp_path / "run", max_steps=1), progress=False)
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


@pytest.mark.parametrize("base", ["fp32", "int8-weight"])
def test_two_process_ddp_on_cpu(tmp_path, data_dir, base):
    """Two gloo processes under torchrun; DDP shares only the LoRA (a quantized base cannot be broadcast)."""
    pytest.importorskip("torchao") if base != "fp32" else None
    extra = "mixed_precision: 'no'\n" if base == "fp32" else f"mixed_precision: bf16\nquant: {base}\n"
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(
        f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: out\nnum_frames: 17\nheight: 64\nwidth: 64\n"
        "rank: 4\nblock_size: 16\nmax_steps: 2\ncheckpoint_every: 2\n" + extra
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lora_training.train",
         str(cfg_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert report["processes"] == 2 and len(report["losses"]) == 2
    assert (tmp_path / "out" / "checkpoints" / "step-0000002" / "lora.safetensors").exists()


@pytest.mark.parametrize("name", ["tiny_wan", "wan2.1_1.3b_2x", "wan2.1_14b_2x", "hunyuan_4x"])
def test_example_configs_are_valid(name):
    cfg = load_config(REPO / "examples" / "train" / f"{name}.yaml")
    assert cfg.attention == "radial" and cfg.radial_config().dense_steps == 0
    if name != "tiny_wan":
        assert cfg.rank == 128 and cfg.mixed_precision == "bf16" and cfg.block_size == 128


def test_tiny_example_recipe_runs(tmp_path):
    subprocess.run([sys.executable, str(REPO / "examples" / "train" / "make_demo_clips.py"), str(tmp_path / "clips")],
                   check=True, capture_output=True)
    cfg = load_config(REPO / "examples" / "train" / "tiny_wan.yaml",
                      [f"data_dir={tmp_path / 'clips'}", f"output_dir={tmp_path / 'run'}", "max_steps=4"])
    final = train(cfg, progress=False)
    assert (final / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((tmp_path / "run" / "train_report.json").read_text())["density"] < 0.6


def test_train_step_bench_runs():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--frames", "33", "--height", "64",
                           "--width", "64", "--block-size", "16", "--steps", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "radial vs dense:" in proc.stdout and "density 1.000" in proc.stdout


def test_dfloat11_base_trains_like_bf16_base(tmp_path, data_dir):
    """A DFloat11-loaded base gives the same losses and LoRA weights as its BF16 original (bf16 autocast)."""
    from radial_diffusers.dfloat11 import compress

    df11 = tmp_path / "df11"
    compress(load_tiny("tiny-wan", 0).transformer, df11, cast_to_bf16=True, progress=False)
    runs = {}
    for name, extra in (("bf16", {}), ("df11", {"dfloat11": str(df11)})):
        cfg = _cfg(data_dir, tmp_path / name, max_steps=2, mixed_precision="bf16", **extra)
        train(cfg, progress=False)
        runs[name] = (json.loads((tmp_path / name / "train_report.json").read_text())["losses"], _lora(tmp_path / name))
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


def test_preprocess_only_builds_the_cache(tmp_path, data_dir):
    from lora_training.train import main as train_main

    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"model: tiny-wan\ndata_dir: {data_dir}\noutput_dir: out\nnum_frames: 17\nheight: 64\n"
                        "width: 64\nblock_size: 16\nmixed_precision: 'no'\n")
    assert train_main([str(cfg_path), "--preprocess-only"]) == 0
    manifest = json.loads((tmp_path / "out" / "cache" / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2 and not (tmp_path / "out" / "checkpoints").exists()
