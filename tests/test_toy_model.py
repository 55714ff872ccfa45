"""The trained toy model: it loads offline from the package, draws what the prompt says, and its training script runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from radial_diffusers.errors import ModelLoadError
from radial_diffusers.tiny import load_tiny
from radial_diffusers.toy import model as toy
from scripts import REPO

sys.path.insert(0, str(REPO / "examples" / "toy"))


@pytest.fixture(scope="module")
def pipe():
    """Loaded with the hub switched off and every network connection refused: offline by construction, checked."""
    import socket

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")

        def no_network(*args, **kwargs):
            raise AssertionError(f"the toy model tried to open a connection: {args}")

        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        return load_tiny("toy-wan")


def _video(pipe, prompt: str, frames: int = 9, seed: int = 0) -> np.ndarray:
    return pipe(prompt, num_frames=frames, height=64, width=64, num_inference_steps=6,
                generator=torch.Generator().manual_seed(seed), output_type="np", **toy.TOY_CALL_KWARGS).frames[0]


def test_toy_model_loads_offline_with_its_training_record(pipe):
    assert type(pipe).__name__ == "WanPipeline"
    record = toy.training_record()
    assert record["transformer"]["final_loss"] < 1.0 and record["vae"]["held_out_psnr_db"] > 15
    assert record["vae"]["held_out_psnr_db_4x"] > 20  # trained past its causal reach: no colour drift at 4x
    assert record["vae"]["held_out_shape_psnr_db"] > 18  # the shapes decode (the base-width-8 VAE: 17.5 dB)
    assert record["transformer"]["ema"] > 0
    stats = record["vae"]["latents"]
    assert pipe.vae.config.latents_std == stats["std"] and len(stats["mean"]) == 16
    for name in toy.COMPONENTS:  # the packaged weights are what the pipeline holds (bf16 values in fp32)
        module = getattr(pipe, name)
        assert all(p.dtype == torch.float32 for p in module.parameters())
        w = next(module.parameters())
        assert torch.equal(w, w.bfloat16().float())


def test_toy_video_moves_and_follows_the_prompt(pipe):
    a = _video(pipe, "a yellow square moving right on a striped background")
    b = _video(pipe, "two red circles bouncing on a checkered background")
    assert a.shape == (9, 64, 64, 3)
    for v in (a, b):
        assert v.std() > 0.05  # not a flat picture
        assert np.abs(np.diff(v, axis=0)).mean() > 1e-3  # frames change over time
    assert np.abs(a - b).mean() > 0.05  # two prompts, two videos (same seed)


def test_missing_or_mismatched_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="train_toy_model.py"):
        toy.toy_wan_pipeline(weights_dir=tmp_path)
    from safetensors.torch import save_file

    save_file({"not.a.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="does not fit the toy architecture"):
        toy.load_weights(toy.toy_wan_transformer(), tmp_path / "w.safetensors")
    # the same names at another width (a record that names the wrong VAE width)
    save_file(toy.toy_wan_vae(base_dim=8).state_dict(), str(tmp_path / "vae8.safetensors"))
    with pytest.raises(ModelLoadError, match="other shapes"):
        toy.load_weights(toy.toy_wan_vae(base_dim=16), tmp_path / "vae8.safetensors")


def test_training_script_runs_two_steps_and_resumes(tmp_path):
    from train_toy_model import main

    out = tmp_path / "run"
    assert main(["--quick", "--out", str(out)]) == 0
    record = json.loads((out / "weights" / "training.json").read_text())
    assert record["vae"]["steps"] == 2 and record["transformer"]["steps"] == 2
    assert np.isfinite(record["transformer"]["final_loss"]) and len(record["vae"]["latents"]["std"]) == 16
    # stage 4 on 21-frame clips (6 latent frames), cut to 6 and stage 3's 3 latent frames in turn
    assert record["transformer_long"]["steps"] == 2 and record["transformer_long"]["latent_lengths"] == [6, 3]
    assert np.isfinite(record["transformer_long"]["final_loss"]) and record["transformer_long"]["frames"] == 21
    assert record["args"]["precision"] == "bf16" and record["args"]["compile"] is False  # quick: nothing compiled
    weights = {n: (out / "weights" / f"{n}.safetensors").read_bytes() for n in toy.COMPONENTS}
    pipe = toy.toy_wan_pipeline(weights_dir=out / "weights")
    video = pipe("a red circle moving left on a dark background", num_frames=5, height=32, width=32,
                 num_inference_steps=1, output_type="np", **toy.TOY_CALL_KWARGS).frames[0]
    assert video.shape == (5, 32, 32, 3) and np.isfinite(video).all()
    # a second run finds every stage finished and writes the same weights
    assert main(["--quick", "--out", str(out)]) == 0
    assert {n: (out / "weights" / f"{n}.safetensors").read_bytes() for n in toy.COMPONENTS} == weights
    # seeded: a fresh run into another folder trains the same weights, byte for byte
    again = tmp_path / "again"
    assert main(["--quick", "--out", str(again)]) == 0
    assert {n: (again / "weights" / f"{n}.safetensors").read_bytes() for n in toy.COMPONENTS} == weights


def test_long_stage_cycles_lengths_and_cuts_clips_to_their_leading_latent_frames():
    from train_toy_model import length_cycle

    from radial_diffusers.masks import latent_frames_for

    assert [latent_frames_for(f) for f in (9, 17, 65)] == [3, 5, 17]
    assert length_cycle(17, 5) == [17, 5, 17, 9, 17, 13]
    assert length_cycle(6, 3) == [6, 3] and length_cycle(5, 5) == [5, 5]
    # the cut is exact: the causal VAE's first latent frames of a clip are the encoding of its first frames alone
    torch.manual_seed(0)
    vae = toy.toy_wan_vae(base_dim=4).eval()
    clip = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    with torch.no_grad():
        whole, head = (vae.encode(x).latent_dist.mode() for x in (clip, clip[:, :, :9]))
    assert whole.shape[2] == 4 and head.shape[2] == 3
    torch.testing.assert_close(whole[:, :, :3], head, rtol=0, atol=1e-6)
    assert not torch.allclose(whole[:, :, 3], whole[:, :, 2])


def test_stage_ends_on_the_weights_moving_average_and_resumes_it(tmp_path):
    from train_toy_model import Stage

    def run(work, ema, seen=None):
        torch.manual_seed(0)
        module = torch.nn.Linear(3, 2)

        def loss_fn(step):
            if seen is not None:  # the weights after step - 1's update
                seen.append([p.detach().clone() for p in module.parameters()])
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
            return (module(x) - y).square().mean()

        work.mkdir(exist_ok=True)
        record = Stage("t", module, 4, 0.1, work, save_every=2, ema=ema).run(loss_fn)
        return record, [p.detach().clone() for p in module.parameters()]

    seen = []
    _, last = run(tmp_path / "raw", 0.0, seen)  # the raw trajectory: the average does not change it
    trajectory = seen + [last]
    ema = [p.clone() for p in trajectory[0]]
    for step, weights in enumerate(trajectory[1:], start=1):  # diffusers' EMAModel warm-up: 0 after the first step
        decay = 0.0 if step == 1 else min(0.9, step / (9 + step))
        ema = [e * decay + w * (1 - decay) for e, w in zip(ema, weights)]
    record, averaged = run(tmp_path / "ema", 0.9)
    assert record["ema"] == 0.9
    for got, want, raw in zip(averaged, ema, last):
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, raw)
    # resumed from its step-2 checkpoint (which holds the average), the stage ends where the unbroken run did
    _, resumed = run(tmp_path / "ema", 0.9)
    for got, want in zip(resumed, averaged):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_compile_without_a_cpp_compiler_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import train_toy_model

    monkeypatch.setattr(train_toy_model.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(SystemExit):
        train_toy_model.main(["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert "--compile needs a C++ compiler (g++ not found)" in err and "--no-compile" in err
    assert not (tmp_path / "run").exists()


def test_bf16_stage_computes_the_loss_in_bf16_and_keeps_float32_weights(tmp_path):
    from train_toy_model import Stage

    def run(bf16):
        torch.manual_seed(0)
        module, dtypes = torch.nn.Linear(8, 4), []

        def loss_fn(step):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)
            out = module(x)
            dtypes.append(out.dtype)
            return (out.float() - y).square().mean()

        record = Stage(f"t{bf16}", module, 3, 0.1, tmp_path, save_every=10, bf16=bf16).run(loss_fn)
        return record, dtypes, [p.detach().clone() for p in module.parameters()]

    (_, dtypes16, w16), (_, dtypes32, w32) = run(True), run(False)
    assert dtypes16 == [torch.bfloat16] * 3 and dtypes32 == [torch.float32] * 3
    assert all(w.dtype == torch.float32 for w in w16)
    for a, b in zip(w16, w32):  # the same descent, to bf16's rounding
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02)
        assert not torch.equal(a, b)


def test_latent_coverage_is_the_max_over_each_latents_frames_and_pixels():
    from train_toy_model import latent_coverage, object_weight

    cover = torch.zeros(2, 9, 8, 12)
    cover[0, 0, 0, 0] = 0.5  # the first frame: its own latent frame
    cover[0, 5, 6, 11] = 1.0  # frames 5-8: latent frame 2; pixel (6, 11): latent cell (1, 2)
    cover[0, 6, 7, 10] = 0.25
    cover[1, 1:5, 2, 3] = torch.tensor([0.1, 0.9, 0.3, 0.2])  # frames 1-4: latent frame 1, cell (0, 0)
    got = latent_coverage(cover, temporal=4, spatial=4)
    want = torch.zeros(2, 3, 2, 3)
    want[0, 0, 0, 0], want[0, 2, 1, 2], want[1, 1, 0, 0] = 0.5, 1.0, 0.9
    assert torch.equal(got, want)
    torch.testing.assert_close(object_weight(got, 8.0), 1 + 8 * want)


def test_generate_defaults_to_the_toy_model(tmp_path):
    """The demo's defaults (model, prompt, block size, preset), at a short length."""
    from radial_diffusers.cli import DEFAULT_PROMPT, main

    out = tmp_path / "demo.mp4"
    assert main(["generate", "--frames", "17", "--steps", "4", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model"] == "toy-wan" and report["prompt"] == DEFAULT_PROMPT
    assert (report["height"], report["width"], report["block_size"]) == (64, 64, 64)
    assert report["config"]["dense_layers"] == 1  # the Wan preset: the toy has 4 layers
    assert report["latent_geometry"] == [5, 16, 16] and report["density"] < 1


def test_demo_length_is_past_the_trained_length_and_sparse(tmp_path):
    """The demo's own length (no --frames): longer than the toy's longest training clips, 4k+1 frames, and a mask
    that skips more than half of the attention blocks (at the trained length it keeps half: no gain on a CPU)."""
    from radial_diffusers.cli import TOY_DEFAULTS, main
    from radial_diffusers.toy.model import TRAIN_FRAMES

    assert TOY_DEFAULTS["frames"] > TRAIN_FRAMES and TOY_DEFAULTS["frames"] % 4 == 1
    out = tmp_path / "demo.mp4"
    assert main(["generate", "--steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == TOY_DEFAULTS["frames"]
    assert report["latent_geometry"] == [(TOY_DEFAULTS["frames"] - 1) // 4 + 1, 16, 16]
    assert report["density"] < 0.45


def test_words_the_toy_never_saw_are_named(tmp_path, capsys):
    from radial_diffusers.cli import main

    out = tmp_path / "cat.mp4"
    assert main(["generate", "--prompt", "a Cat dancing on a striped background", "--frames", "5", "--steps", "1",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "not among them: cat, dancing (each reads as one unknown token)" in err and "striped" in err
    assert out.is_file()


def test_length_extension_example_runs(tmp_path):
    """examples/toy/length_extension.py --quick: clips, a 2-step LoRA with `radial-diffusers train`, the 2x eval."""
    from scripts import run_script

    text = run_script(REPO / "examples" / "toy" / "length_extension.py", "--quick", "--out", tmp_path)
    assert "radial+lora" in text and (tmp_path / "eval-2x" / "index.html").is_file()
    variants = {v["name"]: v for v in json.loads((tmp_path / "eval-2x" / "report.json").read_text())["variants"]}
    lora, radial = variants["radial+lora"], variants["radial"]
    assert lora["status"] == "ok", lora["error"]  # (run_script fails on a non-zero exit: a failed variant)
    assert lora["digests"] != radial["digests"]  # the LoRA changed the video
    assert (tmp_path / "lora" / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_toy_quality_bench_dry_run(tmp_path):
    from scripts import run_script

    text = run_script(REPO / "bench" / "toy_quality.py", "--dry-run", "--out", tmp_path)
    assert "| 1x | 9 | radial |" in text and "| radial+dfloat11 | ok |" in text
    assert "| radial+int4-weight | failed" in text  # needs CUDA: reported, the others complete
