"""Tests for the ``radial-diffusers`` command line (``radial_diffusers.cli``); CPU, tiny models, small sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radial_diffusers as rd
from radial_diffusers.cli import main
from radial_diffusers.tiny import load_tiny

SMALL = ["--model", "tiny-wan", "--frames", "17", "--height", "64", "--width", "64", "--steps", "2", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


def _generate(tmp_path, *extra, name="video"):
    out = tmp_path / f"{name}.mp4"
    rc = main(["generate", *SMALL, "--out", str(out), *extra])
    assert rc == 0
    report = json.loads((tmp_path / f"{name}.json").read_text())
    return out, report


def _read_video(path):
    import imageio
    import numpy as np

    frames = imageio.mimread(path, memtest=False)
    return np.stack(frames)


def test_generate_tiny_wan_radial(tmp_path, capsys):
    out, report = _generate(tmp_path)
    video = _read_video(out)
    assert video.shape == (17, 64, 64, 3)

    from PIL import Image

    mask_png = tmp_path / "video.mask.png"
    with Image.open(mask_png) as im:
        im.load()
        # 5 latent frames x 16 tokens = 5 blocks of 16: drawn as a readable picture, not 5 x 5 pixels
        assert im.mode == "RGB" and min(im.size) >= 400

    assert report["model"] == "tiny-wan"
    assert report["attention"] == "radial"
    assert (report["frames"], report["height"], report["width"]) == (17, 64, 64)
    assert report["latent_geometry"] == [5, 4, 4]
    assert report["text_tokens"] == 0 and report["seq_len"] == 80
    assert report["block_size"] == 16
    assert 0 < report["density"] < 1
    assert 0 < report["flops_saved"] < 1 and report["speedup_bound"] > 1
    assert report["steps"] == 2 and report["sparse_steps"] > 0
    assert report["config"]["block_size"] == 16 and report["config"]["decay_factor"] == 0.2
    assert report["config"]["dense_layers"] == 0  # tiny default: the preset's dense layer is half of a 2-layer model
    assert len(report["step_seconds"]) == 2 and report["seconds_per_step"] > 0
    assert report["total_seconds"] > 0
    # the values the pipeline used, not the unset options: WanPipeline's guidance 5.0, the tiny scheduler's shift 7.0
    assert report["guidance_scale"] == 5.0 and report["flow_shift"] == 7.0
    assert 0 < report["denoise_seconds"] < report["total_seconds"]
    assert 0 < report["decode_seconds"] < report["total_seconds"] and report["write_seconds"] > 0
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["torch_version"] and report["diffusers_version"]
    assert report["outputs"] == {"video": str(out), "mask_png": str(mask_png), "report": str(tmp_path / "video.json")}
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.json", "video.mask.png", "video.mp4"]
    captured = capsys.readouterr()
    assert "density" in captured.out and "VAE decode" in captured.out
    assert "VAE decode (latent frames)" in captured.err and "5/5" in captured.err  # one decoder call per latent frame


def test_generate_reports_sparse_and_dense_step_times_side_by_side(tmp_path, capsys):
    _, report = _generate(tmp_path, "--steps", "4", "--dense-steps", "2")
    assert report["sparse_steps"] == 2
    times = report["step_seconds"]
    # step 0 and the first sparse step are warm-up: dense = step 1, sparse = step 3
    assert report["dense_seconds_per_step"] == pytest.approx(times[1])
    assert report["sparse_seconds_per_step"] == pytest.approx(times[3])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("radial-diffusers: measured in this run: sparse steps ")
    assert "the first step and the first sparse one are warm-up" in line and "bound of attention alone" in line
    _, dense = _generate(tmp_path, "--attention", "dense", name="dense")
    assert dense["sparse_seconds_per_step"] is None and "measured in this run" not in capsys.readouterr().out


def test_generate_dense_and_options(tmp_path, capsys):
    out, report = _generate(
        tmp_path, "--attention", "dense", "--flow-shift", "3.0", "--guidance-scale", "1.0", "--seed", "3", "--fps", "8",
        "--negative-prompt", "blurry",
    )
    # guidance 1 turns classifier-free guidance off, and with it the negative prompt: said, not silently recorded
    assert ("uses --negative-prompt through classifier-free guidance, which --guidance-scale 1 turns off"
            in capsys.readouterr().err)
    assert report["attention"] == "dense"
    assert report["density"] == 1.0 and report["flops_saved"] == 0.0
    assert report["sparse_steps"] == 0
    assert report["latent_geometry"] == [5, 4, 4]
    assert report["flow_shift"] == 3.0 and report["guidance_scale"] == 1.0 and report["fps"] == 8
    assert report["audio"] is None  # a video-only pipeline
    assert report["outputs"]["mask_png"] is None
    assert not (tmp_path / "video.mask.png").exists()
    assert _read_video(out).shape == (17, 64, 64, 3)


def test_generate_dense_steps_and_rounding(tmp_path, capsys):
    # 18 frames -> 17, 70 px -> 64; dense_steps=1 of 2 -> exactly one sparse step; int vs fraction parsing
    out = tmp_path / "r.mp4"
    rc = main(["generate", "--model", "tiny-wan", "--frames", "18", "--height", "70", "--width", "64", "--steps", "2",
               "--dense-steps", "1", "--dense-layers", "0", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["frames"], report["height"]) == (17, 64)
    assert report["config"]["dense_steps"] == 1 and report["sparse_steps"] == 1
    err = capsys.readouterr().err
    assert "--frames 18 rounded to 17" in err and "--height 70 rounded to 64" in err


def test_generate_tiny_hunyuan(tmp_path):
    out, report = _generate(tmp_path, "--model", "tiny-hunyuan", "--negative-prompt", "blurry",
                            "--true-cfg-scale", "2.0", name="hy")
    assert report["family"] == "hunyuan" and report["fps"] == 24
    assert report["text_tokens"] > 0
    # tiny HunyuanVideo: VAE x8, patch 1 -> 8x8 tokens per frame
    assert report["latent_geometry"] == [5, 8, 8]
    assert report["seq_len"] == 5 * 64 + report["text_tokens"]
    assert 0 < report["density"] < 1 and report["sparse_steps"] > 0
    assert _read_video(out).shape == (17, 64, 64, 3)


def test_generate_tiny_wan_i2v(tmp_path):
    from PIL import Image

    image = tmp_path / "first.png"
    Image.new("RGB", (80, 48), (200, 30, 30)).save(image)
    out, report = _generate(tmp_path, "--model", "tiny-wan-i2v", "--image", str(image), name="i2v")
    assert report["image_to_video"] is True and report["image"] == str(image)
    assert 0 < report["density"] < 1 and report["sparse_steps"] > 0
    assert _read_video(out).shape == (17, 64, 64, 3)


def test_generate_image_sets_size_where_pipeline_takes_none(tmp_path, capsys):
    # HunyuanVideo-1.5 image-to-video takes no height / width: a wide image gives the wide bucket of its target size,
    # --height / --width are overridden with a note, and the report says the size actually generated
    from PIL import Image

    image = tmp_path / "wide.png"
    Image.new("RGB", (96, 48), (30, 160, 40)).save(image)
    out, report = _generate(tmp_path, "--model", "tiny-hunyuan1.5-i2v", "--image", str(image), name="hv15")
    assert report["image_to_video"] is True
    assert report["width"] > report["height"]
    err = capsys.readouterr().err
    assert "takes no --height/--width" in err
    # the size the run announces (and generated) is the image's bucket, not --height 64 / --width 64 of SMALL
    assert f"17 frames at {report['height']}x{report['width']}" in err and report["height"] != 64
    assert _read_video(out).shape == (17, report["height"], report["width"], 3)


def test_generate_runs_an_ltx_condition_checkpoint_as_the_pipeline_that_passes_the_grid(tmp_path, capsys):
    # LTX-Video 0.9.7's repos load as LTXConditionPipeline (video_coords, no latent grid: radial attention would
    # never run, and its `image` argument made the CLI demand --image): it runs as LTXPipeline or
    # LTXImageToVideoPipeline
    import diffusers
    from PIL import Image

    from radial_diffusers.tiny import tiny_ltx_pipeline

    folder = tmp_path / "ltx-0.9.7-like"
    diffusers.LTXConditionPipeline(**tiny_ltx_pipeline().components).save_pretrained(folder)
    image = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    common = ["--model", str(folder), "--frames", "33", "--height", "32", "--width", "32", "--steps", "2",
              "--block-size", "16", "--dense-steps", "0", "--device", "cpu", "--prompt", "a cat"]
    runs = (("t2v", [], "LTXPipeline"), ("i2v", ["--image", str(image)], "LTXImageToVideoPipeline"))
    for name, extra, pipeline in runs:
        assert main(["generate", *common, *extra, "--out", str(tmp_path / f"{name}.mp4")]) == 0
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["pipeline"] == pipeline and report["image_to_video"] is bool(extra)
        assert report["sparse_steps"] == 2 and report["density"] < 0.5
        assert "loads as LTXConditionPipeline, which does not pass its transformer the latent grid" in \
            capsys.readouterr().err


def test_generate_with_an_image_runs_a_two_task_checkpoint_as_its_image_to_video_pipeline(tmp_path, capsys):
    # Lightricks/LTX-Video and Lightricks/LTX-2 load as their text-to-video pipelines; the image-to-video ones take the
    # same components: with --image the CLI builds those (here LTX-Video's, whose image conditioning needs no PyAV)
    from PIL import Image

    from radial_diffusers.pipelines import image_to_video_pipeline
    from radial_diffusers.tiny import tiny_ltx2_pipeline, tiny_ltx_pipeline

    folder = tmp_path / "ltx"
    tiny_ltx_pipeline().save_pretrained(folder)
    image = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (30, 200, 30)).save(image)
    assert main(["generate", "--model", str(folder), "--image", str(image), "--frames", "33", "--height", "32",
                 "--width", "32", "--steps", "2", "--block-size", "16", "--dense-steps", "0", "--device", "cpu",
                 "--prompt", "a cat", "--out", str(tmp_path / "i2v.mp4")]) == 0
    report = json.loads((tmp_path / "i2v.json").read_text())
    assert report["pipeline"] == "LTXImageToVideoPipeline" and report["image_to_video"] is True
    assert report["sparse_steps"] == 2
    assert "loads as LTXPipeline; with --image it runs as LTXImageToVideoPipeline" in capsys.readouterr().err
    pipe = tiny_ltx2_pipeline()
    twin = image_to_video_pipeline(pipe)
    assert type(twin).__name__ == "LTX2ImageToVideoPipeline" and twin.transformer is pipe.transformer
    assert image_to_video_pipeline(twin) is None


def test_generate_passes_the_frame_rate_to_a_pipeline_that_conditions_on_it(tmp_path, monkeypatch):
    # LTX-Video and LTX-2 condition on frame_rate (LTXPipeline's default is 25): the video is generated for the rate
    # it is written at, --fps or the family's
    import functools

    import diffusers

    seen = []
    original = diffusers.LTXPipeline.__call__

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        seen.append(kwargs.get("frame_rate"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.LTXPipeline, "__call__", call)
    for fps, extra in ((24, []), (12, ["--fps", "12"])):
        out = tmp_path / f"fps{fps}.mp4"
        assert main(["generate", "--model", "tiny-ltx", "--frames", "9", "--height", "32", "--width", "32",
                     "--steps", "1", "--device", "cpu", "--out", str(out), *extra]) == 0
        assert seen[-1] == fps and json.loads(out.with_suffix(".json").read_text())["fps"] == fps


def test_skyreels_df_checkpoint_runs_a_long_video_as_one_window(tmp_path, monkeypatch, capsys):
    """SkyReels-V2's diffusion-forcing pipeline refuses more than base_num_frames (97) frames without
    overlap_history: generate runs them as one window (the whole video under radial attention) and says so, and
    passes --fps as the pipeline's frame-rate class; the tiny DF model keeps its windowed demo (overlap_history)."""
    import functools

    import diffusers

    from radial_diffusers.tiny import tiny_skyreels_v2_df_pipeline

    seen = []
    original = diffusers.SkyReelsV2DiffusionForcingPipeline.__call__

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("base_num_frames", "overlap_history", "fps")})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.SkyReelsV2DiffusionForcingPipeline, "__call__", call)
    folder = tmp_path / "df"
    tiny_skyreels_v2_df_pipeline().save_pretrained(folder)
    common = ["--height", "32", "--width", "32", "--steps", "1", "--block-size", "16", "--device", "cpu",
              "--prompt", "a cat"]
    assert main(["generate", "--model", str(folder), "--frames", "101", "--fps", "16", *common,
                 "--out", str(tmp_path / "long.mp4")]) == 0
    assert seen[-1] == {"base_num_frames": 101, "overlap_history": None, "fps": 16}
    assert "denoises windows of base_num_frames=97 frames; the 101 frames run as one window" in capsys.readouterr().err
    assert main(["generate", "--model", str(folder), "--frames", "93", *common, "--out", str(tmp_path / "s.mp4")]) == 0
    assert seen[-1] == {"base_num_frames": None, "overlap_history": None, "fps": 24}  # within one window: as is
    assert main(["generate", "--model", "tiny-skyreels-v2-df", "--frames", "101", *common,
                 "--out", str(tmp_path / "tiny.mp4")]) == 0
    assert seen[-1] == {"base_num_frames": None, "overlap_history": 17, "fps": 24}


def _streams(path) -> str:
    """ffmpeg's description of a media file's streams (imageio-ffmpeg's binary)."""
    import imageio_ffmpeg

    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                          text=True).stderr


def test_generate_muxes_the_audio_of_an_audio_video_pipeline(tmp_path):
    # LTX-2 returns a waveform next to the frames: the mp4 carries it (AAC), the report says what it is
    out = tmp_path / "ltx2.mp4"
    assert main(["generate", "--model", "tiny-ltx2", "--frames", "33", "--height", "32", "--width", "32", "--steps",
                 "2", "--device", "cpu", "--compare", "dense", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["audio"]["sample_rate"] == 16000 and report["audio"]["channels"] == 2
    assert report["audio"]["seconds"] > 0
    streams = _streams(out)
    assert "Audio: aac" in streams and "16000 Hz, stereo" in streams and "Video: h264" in streams
    assert _read_video(out).shape == (33, 32, 32, 3)  # the video keeps its frames, whatever the audio's length
    assert "Audio: aac" in _streams(out.with_name("ltx2.dense.mp4"))  # --compare dense: the dense video's own audio


def test_write_mp4_with_audio_is_atomic_and_checks_the_waveform(tmp_path):
    import numpy as np

    from radial_diffusers._io import write_mp4_with_audio

    frames = np.random.default_rng(0).random((9, 16, 16, 3))
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 8000))[None]  # 0.5 s of mono 440 Hz at 16 kHz
    out = write_mp4_with_audio(frames, tmp_path / "tone.mp4", 12, torch.from_numpy(tone).float(), 16000)
    assert "16000 Hz, mono" in _streams(out) and _read_video(out).shape == (9, 16, 16, 3)
    for bad in (tone.T, tone[:, :0], tone[None]):  # (samples, channels), no samples, 3-D
        with pytest.raises(ValueError, match=r"audio must be \(channels, samples\) with 1-8 channels"):
            write_mp4_with_audio(frames, tmp_path / "bad.mp4", 12, bad, 16000)
    # mono as 1-D, and a NaN sample (silenced, not a full-scale click) are taken
    noisy = tone[0].copy()
    noisy[100] = np.nan
    write_mp4_with_audio(frames, tmp_path / "mono.mp4", 12, noisy, 16000)
    assert "16000 Hz, mono" in _streams(tmp_path / "mono.mp4")
    (tmp_path / "mono.mp4").unlink()
    with pytest.raises(ValueError, match="audio needs its sample_rate"):
        rd.export_video(frames, tmp_path / "no-rate.mp4", 12, tone, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.mp4"]  # nothing left behind
    assert rd.export_video(frames, tmp_path / "silent.mp4", 12) == tmp_path / "silent.mp4"  # video only
    assert "Audio" not in _streams(tmp_path / "silent.mp4")


@pytest.mark.parametrize("hub_id,preset", [("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan2.2-ti2v"),
                                            ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "wan2.2"),
                                            ("Lightricks/LTX-2", "ltx2"), ("THUDM/CogVideoX1.5-5B", "cogvideox1.5")])
def test_mask_takes_a_checkpoint_id_the_registry_lists(hub_id, preset, capsys):
    # a variant's checkpoint gives the variant's preset and geometry (TI2V-5B: its 16x VAE; A14B: block 64)
    assert main(["mask", "--model", hub_id, "--frames", "81", "--json"]) == 0
    by_id = json.loads(capsys.readouterr().out)
    assert main(["mask", "--model", preset, "--frames", "81", "--json"]) == 0
    assert by_id == json.loads(capsys.readouterr().out) and by_id["model"] == preset
    assert main(["mask", "--model", hub_id.upper(), "--frames", "81", "--json"]) == 0  # Hub ids: any case
    assert json.loads(capsys.readouterr().out) == by_id
    assert main(["mask", "--model", "someone/unlisted-model"]) == 2
    assert "invalid choice: 'someone/unlisted-model'" in capsys.readouterr().err


def test_an_image_conditioning_that_needs_pyav_is_refused_before_generating(tmp_path, monkeypatch, capsys):
    # LTX-2 image-to-video re-compresses the image with H.264 (image_crf, PyAV) as its model was trained; the tiny
    # model passes image_crf=0. A saved checkpoint does not: without PyAV the run stops before denoising, saying so
    import importlib.util

    from PIL import Image

    from radial_diffusers.tiny import tiny_ltx2_pipeline

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real_find_spec(name, *a))
    folder = tmp_path / "ltx2"
    tiny_ltx2_pipeline().save_pretrained(folder)
    image = tmp_path / "first.png"
    Image.new("RGB", (32, 32), (30, 30, 200)).save(image)
    assert main(["generate", "--model", str(folder), "--image", str(image), "--frames", "9", "--height", "32",
                 "--width", "32", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "runs as LTX2ImageToVideoPipeline" in err and "needs PyAV: pip install av" in err
    assert not (tmp_path / "v.mp4").exists()
    # a text-to-video tiny model given --image is pointed at its own family's image-to-video one
    assert main(["generate", "--model", "tiny-ltx2", "--image", str(image), "--out", str(tmp_path / "w.mp4")]) == 2
    assert "e.g. tiny-ltx2-i2v" in capsys.readouterr().err


def test_mask_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["mask", "--model", "wan", "--height", "768", "--width", "1280", "--frames", "69",
               "--decay-factor", "0.2", "--adjacent", "half", "--json"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert round(stats["density"], 6) == round(1 - 0.7366323, 6) == 0.263368
    assert stats["latent_geometry"] == [18, 48, 80]
    assert stats["tokens_per_frame"] == 3840 and stats["seq_len"] == 69120 and stats["n_blocks"] == 540
    assert stats["speedup_bound"] > 3
    assert stats["png"] is None and list(tmp_path.iterdir()) == []  # no --out: nothing is written


@pytest.mark.parametrize("model, tiny, frames, height, width, seq_len", [
    ("wan2.2-ti2v", "tiny-wan2.2-ti2v", 121, 704, 1280, 27280),  # 16x VAE: 22 x 40 tokens per frame
    ("cogvideox1.5", "tiny-cogvideox1.5", 81, 768, 1360, 11 * 48 * 85 + 226),  # 21 latent frames padded to 22, / 2
])
def test_mask_uses_the_variant_geometry(capsys, model, tiny, frames, height, width, seq_len):
    """A variant's VAE and patch (Wan2.2 TI2V-5B, CogVideoX 1.5), as its pipeline turns the same size into tokens
    (the tiny pipeline of the variant has the same VAE compression and patch)."""
    from radial_diffusers.pipelines import latent_geometry

    assert main(["mask", "--model", model, "--frames", str(frames), "--height", str(height), "--width", str(width),
                 "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert tuple(stats["latent_geometry"]) == latent_geometry(load_tiny(tiny), frames, height, width)
    assert stats["seq_len"] == seq_len


def _colours(image) -> set:
    return {tuple(c) for c in image.convert("RGB").getdata()}


def test_mask_picture_is_readable(tmp_path, capsys):
    """--out draws cells per block, frame grid, the sink (Wan) or text (HunyuanVideo) region, title and legend."""
    from PIL import Image

    from radial_diffusers.mask_image import _GRID, _KEPT, _SINK, _SKIPPED, _TEXT

    wan, hunyuan = tmp_path / "wan.png", tmp_path / "hy.png"
    assert main(["mask", "--height", "64", "--width", "64", "--frames", "17", "--block-size", "16",
                 "--out", str(wan)]) == 0
    assert f"mask picture saved to {wan}" in capsys.readouterr().out
    with Image.open(wan) as im:
        assert min(im.size) >= 400  # 5 x 5 blocks, drawn about 720 pixels wide
        colours = _colours(im)
    assert {_KEPT, _SKIPPED, _SINK, _GRID} <= colours and _TEXT not in colours
    assert main(["mask", "--model", "hunyuan", "--height", "256", "--width", "256", "--frames", "29",
                 "--text-tokens", "256", "--out", str(hunyuan)]) == 0
    with Image.open(hunyuan) as im:
        colours = _colours(im)
    assert _TEXT in colours and _SINK not in colours
    assert len(colours) > 20  # anti-aliased title, labels and legend text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hy.png", "wan.png"]


def test_mask_text_output_and_hunyuan(tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["mask", "--model", "hunyuan", "--frames", "117", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seq_len 115456" in text and "density" in text and "speedup bound" in text
    assert out.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", "--model", "tiny-flux"], "unknown model"),
        (["generate", "--model", "not a model"], "unknown model"),
        (["generate", "--frames", "-3"], "--frames"),
        (["generate", "--height", "0"], "--height"),
        (["generate", "--attention", "bogus"], "--attention"),
        (["generate", "--model", "tiny-wan-i2v"], "--image is required"),
        (["generate", "--image", "x.png"], "text-to-video"),
        (["generate", "--model", "tiny-wan-i2v", "--image", "x.png"], "--image x.png: no such file"),
        (["generate", "--model", "tiny-wan-i2v", "--image", "."], "--image .: not a file"),
        # a hub model: checked before anything loads (nothing is fetched)
        (["generate", "--model", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "--image", "."], "--image .: not a file"),
        (["eval", "--model", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "--image", "x.png"], "--image x.png: no such"),
        (["generate", "--block-size", "24"], "block_size"),
        (["generate", "--dense-steps", "1.5"], "--dense-steps"),
        (["generate", "--out", "video.gif"], ".mp4"),
        (["generate", "--offload", "model", "--device", "cpu"], "--offload model"),
        (["generate", "--true-cfg-scale", "2"], "HunyuanVideo"),
        (["generate", "--dfloat11", "missing_dir"], "--dfloat11 missing_dir"),
        (["compress", "tiny-wan", "out"], "--cast-bf16"),
        (["compress", "tiny-wan", "out", "--pattern", "[1]"], "--pattern"),
        (["compress", "nowhere/model", "out"], "could not be fetched"),
        (["mask", "--model", "flux"], "--model"),
        (["mask", "--frames", "0"], "--frames"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_input_exits_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_hub_id_offline_is_a_plain_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run(
        [sys.executable, "-m", "radial_diffusers", "generate", "--model", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
         "--out", str(tmp_path / "v.mp4")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"radial-diffusers generate: error: could not load model Wan-AI/Wan2.1-T2V-1.3B-Diffusers: "
                            f"it is not in the local Hugging Face cache ({tmp_path / 'hf' / 'hub'})")
    # the whole message, not one cut mid-sentence: why, and what to do
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in error and "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in error
    from radial_diffusers.families import tiny_models

    assert error.endswith(", ".join(tiny_models())) and "..." not in error
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_python_m_help():
    proc = subprocess.run([sys.executable, "-m", "radial_diffusers", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0
    assert "generate" in proc.stdout and "mask" in proc.stdout
    # --help does not pull in Diffusers
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from radial_diffusers.cli import main; main(['--help']); "
         "print('diffusers' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.stdout.strip().endswith("False")


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_compress_then_generate_with_dfloat11(tmp_path, capsys, name):
    """`compress` then `generate --dfloat11`: the same video as the BF16 transformer (DF11 is lossless)."""
    df11 = tmp_path / "df11"
    assert main(["compress", name, str(df11), "--cast-bf16", "--workers", "2"]) == 0
    assert "ratio 0." in capsys.readouterr().out
    assert json.loads((df11 / "config.json").read_text())["dfloat11_config"]["version"] == "0.5.0"
    assert main(["compress", name, str(df11), "--cast-bf16"]) == 2  # exists: not overwritten
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    common = ["--model", name, "--dtype", "bfloat16", "--frames", "5"]  # BF16 matmuls are slow on CPU
    plain, _ = _generate(tmp_path, *common, name="plain")
    packed, report = _generate(tmp_path, *common, "--dfloat11", str(df11), name="packed")
    assert report["dfloat11"] == str(df11)
    assert (_read_video(plain) == _read_video(packed)).all()


def test_help_of_subcommands(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--dense-steps" in capsys.readouterr().out
    assert main(["mask", "--help"]) == 0
    assert "--text-tokens" in capsys.readouterr().out
    assert main(["compress", "--help"]) == 0
    assert "--cast-bf16" in capsys.readouterr().out


def test_rd_parallel_after_a_plain_import():
    """The README's ``rd.parallel.hunyuan_video_plan(...)`` right after ``import radial_diffusers as rd``."""
    proc = subprocess.run([sys.executable, "-c", "import radial_diffusers as rd; print(rd.parallel.cp_plan_for)"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "cp_plan_for" in proc.stdout, proc.stderr[-2000:]


def test_defaults_follow_the_loaded_pipeline_rules_and_given_values_are_refused():
    """A default the user did not give is lowered to the pipeline's rule (Mochi 6k+1 frames; LTX-Video's pipeline
    wants sides in multiples of 32 whatever its VAE); a given one is refused with the values that work; Mochi needs
    2 steps."""
    import argparse

    from radial_diffusers.cli import CLIError, _check_pipeline_rules
    from radial_diffusers.pipelines import detect_family, geometry_problem

    mochi, ltx = load_tiny("tiny-mochi"), load_tiny("tiny-ltx")
    unset = argparse.Namespace(frames=None, height=None, width=None, steps=None)
    assert _check_pipeline_rules(mochi, detect_family(mochi), 161, 192, 192, unset) == (157, 192, 192)
    with pytest.raises(CLIError, match=r"--frames 161: MochiPipeline needs 6k\+1 frames"):
        _check_pipeline_rules(mochi, detect_family(mochi), 161, 192, 192, argparse.Namespace(
            frames=161, height=None, width=None, steps=None))
    with pytest.raises(CLIError, match=r"--steps 1: MochiPipeline needs at least 2 denoising steps"):
        _check_pipeline_rules(mochi, detect_family(mochi), 157, 192, 192, argparse.Namespace(
            frames=None, height=None, width=None, steps=1))
    assert geometry_problem(ltx, 41, 80, 64) == (1, "LTXPipeline needs multiples of 32 (VAE 4x, patch 1, its check "
                                                    "of 32); use 64 or 96")
    assert _check_pipeline_rules(ltx, detect_family(ltx), 41, 80, 80, unset) == (41, 64, 64)


def test_a_mask_too_large_to_build_is_one_line_naming_the_flags(capsys, tmp_path):
    out = tmp_path / "never.mp4"
    assert main(["generate", "--model", "tiny-wan", "--frames", "999997", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--frames 999997 --height 192 --width 192: the block mask would be" in err and "(--block-size)" in err
    assert list(tmp_path.iterdir()) == []


def test_frames_follow_the_familys_vae_before_loading(tmp_path, capsys):
    """Frames are rounded by the family's own temporal rule where the name tells the family (Mochi: 6k+1), not by
    the 4k+1 of most families, which sent Mochi's 19 to 17 and then refused 17."""
    for given, used in ((19, 19), (20, 19)):
        out = tmp_path / f"m{given}.mp4"
        assert main(["generate", "--model", "tiny-mochi", "--frames", str(given), "--height", "64", "--width", "64",
                     "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["frames"] == used
        note = "note: --frames 20 rounded to 19 (6k+1)"
        assert (note in capsys.readouterr().err) == (given == 20)


def test_flow_shift_takes_effect_on_a_dynamically_shifting_scheduler(capsys):
    """LTX-Video's scheduler shifts by the token count (use_dynamic_shifting) and would ignore a fixed shift: with
    --flow-shift the fixed shift is used, and a note says so."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from radial_diffusers.cli import _set_flow_shift

    pipe = type("P", (), {})()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05)
    _set_flow_shift(pipe, 12.0)
    assert "replaces FlowMatchEulerDiscreteScheduler's shift by sequence length" in capsys.readouterr().err
    pipe.scheduler.set_timesteps(4, mu=1.0)  # the pipeline still passes mu: the fixed shift wins
    reference = FlowMatchEulerDiscreteScheduler(shift=12.0)
    reference.set_timesteps(4)
    assert torch.equal(pipe.scheduler.timesteps, reference.timesteps)


def test_an_earlier_runs_files_at_the_same_out_do_not_stay(tmp_path, capsys):
    """generate with --compare dense, then again to the same --out with dense attention: the first run's mask picture
    and dense video would read as the second run's; they are removed, with a note."""
    out, _ = _generate(tmp_path, "--compare", "dense")
    assert (tmp_path / "video.mask.png").is_file() and (tmp_path / "video.dense.mp4").is_file()
    capsys.readouterr()
    _, report = _generate(tmp_path, "--attention", "dense")
    assert not (tmp_path / "video.mask.png").exists() and not (tmp_path / "video.dense.mp4").exists()
    assert report["outputs"]["mask_png"] is None
    assert "an earlier run's output to the same --out" in capsys.readouterr().err
    _generate(tmp_path, "--compare", "dense")  # this run's own files stay
    assert (tmp_path / "video.mask.png").is_file() and (tmp_path / "video.dense.mp4").is_file()


def test_bench_times_dense_and_radial_at_a_geometry(capsys):
    """`bench` builds the mask of the geometry (as `mask` does) and times dense SDPA and radial attention on it."""
    assert main(["bench", "--height", "64", "--width", "64", "--frames", "33", "--block-size", "16", "--head-dim",
                 "32", "--heads", "2", "--repeats", "1", "--backward", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latent_geometry"] == [9, 4, 4] and data["seq_len"] == 144 and data["block_size"] == 16
    mask = rd.radial_block_mask(9, 16, model="wan", block_size=16, decay_factor=0.2)
    assert data["density"] == rd.mask_stats(mask, 16, 144).density < 1
    dense, radial = data["rows"]
    assert (dense["name"], radial["name"]) == ("dense (SDPA)", "radial (torch)")
    assert dense["forward_speedup"] == 1.0 and dense["backward_speedup"] == 1.0
    for row in (dense, radial):
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["forward_tflops"] > 0
    # TFLOP/s of the radial row count the kept blocks only: its FLOPs are density x dense's
    flops = [row["forward_tflops"] * row["forward_ms"] for row in (dense, radial)]
    assert flops[1] / flops[0] == pytest.approx(data["density"])
    assert main(["bench", "--height", "64", "--width", "64", "--frames", "17", "--block-size", "16", "--head-dim",
                 "32", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("radial-diffusers bench: wan 64x64x17: latent 5x4x4, 80 tokens") and "radial (torch)" in out


@pytest.mark.parametrize("argv, says", [
    (["--flex"], "--flex times compiled FlexAttention, which needs CUDA"),
    (["--backend", "triton"], "--backend triton runs our Triton kernels, which need CUDA tensors"),
    (["--attention-precision", "fp8", "--dtype", "bfloat16"], "--attention-precision fp8 needs a CUDA GPU"),
])
def test_bench_refuses_what_the_device_cannot_run(argv, says, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["bench", "--device", "cpu", *argv]) == 2
    assert says in capsys.readouterr().err


def test_bench_runs_the_triton_rows_under_the_interpreter(capsys, monkeypatch):
    """The CUDA rows' code path (Triton kernels, fp16, the FP8 row without a backward), run by Triton's interpreter."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["bench", "--device", "cpu", "--backend", "triton", "--dtype", "float16", "--height", "64", "--width",
                 "64", "--frames", "17", "--block-size", "16", "--head-dim", "32", "--repeats", "1", "--backward",
                 "--attention-precision", "fp8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["name"] for r in rows] == ["dense (SDPA)", "radial (triton)", "radial fp8 (triton)"]
    assert rows[1]["backward_ms"] > 0 and rows[2]["backward_ms"] is None and rows[2]["backward_speedup"] is None
