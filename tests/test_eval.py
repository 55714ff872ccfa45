"""`evaluate`, the recall probe inside the processors, `suggest_config`, the report folder and `radial-diffusers eval`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import radial_diffusers as rd
from radial_diffusers.evaluation.recall import RecallProbe
from radial_diffusers.evaluation.run import Variant, default_variants, evaluate
from radial_diffusers.evaluation.suggest import suggest_config
from radial_diffusers.families import random_tiny_models
from radial_diffusers.tiny import default_call_kwargs, load_tiny

GEOMETRY = dict(num_frames=17, height=64, width=64, num_inference_steps=3)
CFG = rd.RadialConfig(block_size=16, dense_layers=0, dense_steps=2)  # of 3: one timed dense, one sparse step


def _call(**extra):
    return dict(GEOMETRY, call_kwargs=dict(default_call_kwargs("tiny-wan"), **extra))


@pytest.fixture(scope="module")
def result():
    """dense, radial, a config that keeps every layer dense, a scheme the CPU cannot run (int4-weight needs CUDA),
    int8-weight: two prompts."""
    pipe = load_tiny("tiny-wan")
    variants = default_variants(CFG, quant=["int4-weight", "int8-weight"],
                                configs={"all-dense": rd.RadialConfig(block_size=16, dense_layers=2)})
    return evaluate(pipe, ["a cat dancing", "a red car on a street"], variants=variants, progress=False,
                    recall_decays=(1.0,), **_call())


def test_evaluate_measures_every_variant_against_dense(result):
    names = [v.name for v in result.variants]
    assert names == ["dense", "radial", "all-dense", "radial+int4-weight", "radial+int8-weight"]
    radial = result.variant("radial")
    assert radial.status == "ok" and len(radial.psnr) == 2 and len(radial.psnr[0]) == 17
    # the radial video differs from the dense one (a sparse mask and sparse steps), but not by much
    assert all(np.isfinite(p).all() for p in radial.psnr) and 20 < radial.psnr_mean < 80
    assert 0.5 < radial.ssim_mean < 1.0
    assert 0 < radial.density < 1 and 0 < radial.recall < 1
    # the report keeps each video as uint8 frames, as written to the mp4s
    assert result.videos["radial"][1].shape == (17, 64, 64, 3) and result.videos["radial"][1].dtype == np.uint8
    assert not np.array_equal(result.videos["dense"][1], result.videos["radial"][1])
    assert radial.step_seconds > 0 and radial.sparse_step_seconds > 0 and radial.dense_step_seconds > 0
    dense = result.variant("dense")
    assert dense.psnr == [] and dense.density == 1.0 and dense.step_seconds > 0
    for v in result.variants:
        assert v.status == "ok" or v.name == "radial+int4-weight"
    # a config whose dense layers cover the model computes every block: density 1, the dense video, no sparse call
    everything = result.variant("all-dense")
    assert everything.density == 1.0 and everything.psnr_mean == np.inf and everything.recall is None


def test_a_failed_variant_is_reported_and_the_others_complete(result):
    failed = result.variant("radial+int4-weight")
    assert failed.status == "failed" and "not supported on cpu" in failed.error and failed.psnr == []
    assert "radial+int4-weight" not in result.videos
    ok = result.variant("radial+int8-weight")
    assert ok.status == "ok" and len(ok.psnr) == 2 and ok.identical_to == {"radial": False}
    text = result.summary()
    assert "FAILED: ValueError: quantization scheme 'int4-weight'" in text and "radial+int8-weight" in text


def test_recall_matrix_and_what_if_masks(result):
    (rec,) = result.recall.values()
    matrix = np.array(rec["matrix"], dtype=float)
    assert matrix.shape == (2, 3)  # tiny-wan: 2 layers x 3 steps
    assert ((matrix > 0) & (matrix < 1)).all()
    # CFG: dense_steps=2 of 3, dense_layers=0 -> only the last step is sparse, outlined as such in the heat map
    assert rec["dense_cells"] == {"variant": "radial", "cells": [[True, True, False]] * 2}
    # decay 1.0 keeps at least the blocks of decay 0.2: never less mass (same q, k and rows)
    wider = np.array(rec["what_if"]["1.0"]["matrix"], dtype=float)
    assert (wider >= matrix - 1e-6).all() and rec["what_if"]["1.0"]["density"] >= rec["density"]


def test_probe_dense_run_equals_stock_dense_and_a_full_mask_has_recall_one():
    pipe = load_tiny("tiny-wan")
    kwargs = dict(GEOMETRY, **default_call_kwargs("tiny-wan"), output_type="np")
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    stock = pipe("a cat", generator=gen(), **kwargs).frames[0]
    # a block as large as the whole sequence: one block, kept -> every call dense, recall exactly 1
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=256, dense_layers=0, dense_steps=0))
    state.probe = probe = RecallProbe(rows=16, dense=True)
    probed = pipe("a cat", generator=gen(), **kwargs).frames[0]
    rd.remove_radial_attention(pipe)
    np.testing.assert_allclose(probed, stock, atol=1e-5)
    assert probe.layers == 2 and probe.steps == 3
    assert all(abs(v - 1.0) < 1e-6 for row in probe.matrix() for v in row)


def test_probe_recall_equals_an_explicit_softmax_on_the_calls_q_and_k():
    pipe = load_tiny("tiny-wan")
    state = rd.apply_radial_attention(pipe, CFG)
    seen = []

    class Recorder(RecallProbe):
        def observe(self, state, layer, q, k, layout, kv_lengths, sparse):
            super().observe(state, layer, q, k, layout, kv_lengths, sparse)
            seen.append((state.step, layer, q.clone(), k.clone(), layout))

    state.probe = probe = Recorder(rows=8, seed=5)
    pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="latent", guidance_scale=1.0,
         **GEOMETRY, **default_call_kwargs("tiny-wan"))
    rd.remove_radial_attention(pipe)
    step, layer, q, k, layout = seen[-1]
    g = torch.Generator().manual_seed((5 * 1_000_003 + step) * 4099 + layer)
    rows = torch.randint(q.shape[1], (8,), generator=g)
    probs = torch.softmax(torch.einsum("rhd,shd->hrs", q[0, rows].double(), k[0].double()) / 12 ** 0.5, dim=-1)
    keep = layout.block_mask()[rows // 16][:, torch.arange(q.shape[1]) // 16]
    expected = float((probs * keep).sum(-1).mean())
    assert abs(probe.matrix()[layer][step] - expected) < 1e-5


def test_no_probe_costs_nothing(monkeypatch):
    pipe = load_tiny("tiny-wan")
    rd.apply_radial_attention(pipe, CFG)

    def boom(*a, **k):
        raise AssertionError("the probe ran without being set")

    monkeypatch.setattr("radial_diffusers.evaluation.recall.softmax_rows", boom)
    monkeypatch.setattr(RecallProbe, "observe", boom)
    pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="latent", **GEOMETRY,
         **default_call_kwargs("tiny-wan"))
    rd.remove_radial_attention(pipe)


def test_dfloat11_variant_is_bit_identical_on_bf16_weights():
    from radial_diffusers.tiny import cast_pipeline

    pipe = cast_pipeline(load_tiny("tiny-wan"), torch.bfloat16)
    result = evaluate(pipe, "a cat", variants=default_variants(CFG, dfloat11=True), recall_rows=0, progress=False,
                      **dict(_call(), num_frames=9))
    df11 = result.variant("radial+dfloat11")
    assert df11.status == "ok" and df11.identical_to == {"radial": True}
    assert df11.digests == result.variant("radial").digests
    # the original transformer is back, uncompressed and without radial processors
    assert type(pipe.transformer.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16


def test_weight_variants_cover_both_experts_of_wan22(monkeypatch):
    """Wan2.2 A14B: a DF11 / quantized variant gives both experts those weights (DF11 bit-identical to radial), and
    both original experts are back afterwards."""
    import radial_diffusers.integration as integration
    from radial_diffusers.dfloat11 import is_dfloat11
    from radial_diffusers.quant import is_quantized
    from radial_diffusers.tiny import cast_pipeline

    pipe = cast_pipeline(load_tiny("tiny-wan2.2"), torch.bfloat16)
    originals = (pipe.transformer, pipe.transformer_2)
    seen = []
    real = integration.apply_radial_attention

    def spy(target, config=None):  # the experts each variant runs
        experts = (target.transformer, target.transformer_2)
        seen.append((all(map(is_dfloat11, experts)), all(is_quantized(e.blocks[0].attn1.to_q.weight) for e in experts)))
        return real(target, config)

    monkeypatch.setattr(integration, "apply_radial_attention", spy)
    result = evaluate(pipe, "a cat", variants=default_variants(CFG, dfloat11=True, quant=["int8-weight"]),
                      recall_rows=0, progress=False,
                      **dict(GEOMETRY, num_frames=9, call_kwargs=default_call_kwargs("tiny-wan2.2")))
    assert [v.status for v in result.variants] == ["ok"] * 4, [v.error for v in result.variants]
    assert result.variant("radial+dfloat11").identical_to == {"radial": True}
    assert (True, False) in seen and (False, True) in seen
    assert (pipe.transformer, pipe.transformer_2) == originals


def test_a_dfloat11_checkpoint_variant_cannot_stand_for_two_experts(tmp_path):
    (variant,) = [v for v in default_variants(CFG, dfloat11=tmp_path) if v.weights == "dfloat11"]
    assert variant.checkpoint == str(tmp_path)
    pipe = load_tiny("tiny-wan2.2")
    originals = (pipe.transformer, pipe.transformer_2)
    result = evaluate(pipe, "a cat", variants=[variant], recall_rows=0, progress=False,
                      **dict(GEOMETRY, num_frames=5, num_inference_steps=1,
                             call_kwargs=default_call_kwargs("tiny-wan2.2")))
    failed = result.variant("radial+dfloat11")
    assert failed.status == "failed" and "has 2 experts (transformer, transformer_2)" in failed.error
    assert (pipe.transformer, pipe.transformer_2) == originals


def test_dfloat11_variant_on_fp32_weights_fails_with_the_fix():
    pipe = load_tiny("tiny-wan")
    result = evaluate(pipe, "a cat", variants=[Variant("radial+dfloat11", CFG, weights="dfloat11")],
                      recall_rows=0, progress=False, **dict(_call(), num_frames=9))
    failed = result.variant("radial+dfloat11")
    assert failed.status == "failed" and "--dtype bfloat16" in failed.error
    assert result.variant("dense").status == "ok"


def test_bad_input():
    pipe = load_tiny("tiny-wan")
    with pytest.raises(ValueError, match="at least one prompt"):
        evaluate(pipe, [], progress=False)
    with pytest.raises(ValueError, match="unique"):
        evaluate(pipe, "a", variants=[Variant("radial", CFG), Variant("radial", CFG)], progress=False)
    with pytest.raises(FileNotFoundError, match="LoRA"):
        evaluate(pipe, "a", variants=default_variants(CFG, lora="/no/such/lora.safetensors"), progress=False)
    with pytest.raises(ValueError, match="nothing to run"):
        evaluate(pipe, "a", variants=[], recall_rows=0, progress=False)
    with pytest.raises(ValueError, match="rows must be >= 1"):
        RecallProbe(rows=0)


def test_suggest_config_reads_the_recall():
    pipe = load_tiny("tiny-wan")
    strict = suggest_config(pipe, "a cat", config=CFG, min_recall=0.99, progress=False, **_call())
    # a random model attends everywhere: every layer is below 0.99, so the proposal keeps them all dense
    assert strict.config.dense_layers == 2 and any("every layer" in n for n in strict.notes)
    assert not strict.reached and strict.explain().splitlines()[0] == (
        "target recall 0.99: no candidate reaches it; proposed: every layer dense (dense_layers=2), the dense "
        "reference")
    lax = suggest_config(pipe, "a cat", config=CFG, min_recall=0.05, progress=False, **_call())
    assert lax.config.dense_layers == 0 and lax.config.dense_steps == 0 and lax.config.decay_factor == 0.2
    text = lax.explain()
    assert "recall per layer" in text and "decay 1: dense_layers=0" in text
    assert lax.reached and json.loads(json.dumps(lax.to_dict()))["reached"] is True
    with pytest.raises(ValueError, match="min_recall"):
        suggest_config(pipe, "a cat", min_recall=1.5, progress=False, **_call())
    # another target from the same measurement (no pipeline involved): the proposal of a fresh pass at that target
    again = strict.retarget(0.05)
    assert again.config == lax.config and again.by_decay == lax.by_decay and again.min_recall == 0.05
    with pytest.raises(ValueError, match="min_recall"):
        strict.retarget(0)


def test_suggest_prefers_the_plan_that_skips_the_most_attention(monkeypatch, tiny_pipes):
    """A sparser mask whose recall forces every layer dense loses to a wider one that keeps layers sparse."""
    from radial_diffusers.evaluation import run

    what_if = {"0.2": {"matrix": [[0.8, 0.8, 0.8]] * 2, "density": 0.3},  # below 0.9 everywhere: all dense
               "0.5": {"matrix": [[0.8, 0.85, 0.9], [0.95] * 3], "density": 0.5},  # layer 0 dense
               "1.0": {"matrix": [[0.97] * 3] * 2, "density": 0.8}}  # all sparse
    fake = run.EvalResult(samples=[], settings={}, variants=[], recall={"m": {"what_if": what_if}})
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: fake)
    s = suggest_config(tiny_pipes["tiny-wan"], "x", decays=(0.2, 0.5, 1.0), min_recall=0.9, progress=False)
    # skipped: decay 0.2 nothing; 0.5: 3 of 6 cells x 50% of the blocks = 25%; 1.0: 6 of 6 x 20% = 20%
    assert (s.config.decay_factor, s.config.dense_layers, s.config.dense_steps) == (0.5, 1, 0) and not s.notes
    assert s.by_decay[0.2]["recall"] is None and s.by_decay[0.2]["skipped"] == 0.0
    assert s.by_decay[0.5]["skipped"] == pytest.approx(0.25) and s.by_decay[1.0]["skipped"] == pytest.approx(0.2)
    assert s.per_layer == pytest.approx([0.85, 0.95]) and "attention skipped 25.0%" in s.explain()
    # the candidates below the target are marked as such (not proposed), the proposed one is not
    lines = {line.split(":")[0]: line for line in s.explain().splitlines() if line.startswith("decay ")}
    assert lines["decay 0.2"].endswith("(misses the target: not proposed)")
    assert not lines["decay 0.5"].endswith("not proposed") and not lines["decay 1"].endswith("not proposed")
    # last_dense_steps: those steps run dense whatever the plan, so they count neither in its recall nor as skipped
    s = suggest_config(tiny_pipes["tiny-wan"], "x", decays=(0.2, 0.5, 1.0), min_recall=0.9, progress=False,
                       config=rd.RadialConfig(last_dense_steps=1))
    assert s.by_decay[1.0]["skipped"] == pytest.approx(4 / 6 * 0.2)  # 2 layers x 2 of the 3 steps
    assert s.by_decay[0.5]["skipped"] == pytest.approx(2 / 6 * 0.5) and s.by_decay[0.5]["recall"] == pytest.approx(0.95)
    assert s.config.last_dense_steps == 1 and s.config.decay_factor == 0.5


# -- the report ----------------------------------------------------------------------------------------------------


def test_report_folder_and_its_assets(result, tmp_path):
    index = result.write(tmp_path / "report")
    folder = index.parent
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>")
    # no network: no absolute or protocol-relative URL but the SVG namespace
    assert re.findall(r"(?:https?:)?//[\w.-]+", page.replace('xmlns="http://www.w3.org/2000/svg"', "")) == []
    assert (folder / "mask.png").is_file() and 'src="mask.png"' in page  # the mask picture
    assert "<h2>Attention recall, layer x step</h2>" in page and "<title>layer 0, step" in page  # the heat map
    for ref in re.findall(r'(?:src|href|poster)="([^"]+)"', page):
        assert (folder / ref).is_file(), ref  # every asset is in the folder: it opens from disk
    assert len(re.findall(r"<svg", page)) >= 5  # heat map, 2 samples x (PSNR, SSIM)
    assert "failed: ValueError: quantization scheme" in page
    data = json.loads((folder / "report.json").read_text())
    assert [v["name"] for v in data["variants"]] == [v.name for v in result.variants]
    assert data["variants"][1]["psnr_mean"] == pytest.approx(result.variant("radial").psnr_mean)
    radial = result.variant("radial")
    per_sample = page.split("<h2>Per sample</h2>")[1].split("</table>")[0]  # one row per prompt and seed
    for i, sample in enumerate(result.samples):
        row = per_sample.split("<tr>")[i + 2]
        psnr = [x for x in radial.psnr[i] if np.isfinite(x)]
        assert row.startswith(f"<td>{i}: {sample['prompt']}") and f"{np.mean(psnr):.2f} / " in row
    import imageio.v3 as iio

    video = iio.imread(folder / "videos" / "sample-0.mp4")
    # dense | radial | all-dense | radial+int8-weight side by side, 4-pixel gaps
    assert video.shape == (17, 64, 4 * 64 + 3 * 4, 3)
    with pytest.raises(FileExistsError, match="overwrite"):
        result.write(folder)
    result.write(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folders left


def test_report_is_written_atomically(result, tmp_path, monkeypatch):
    out = tmp_path / "report"
    result.write(out)
    before = (out / "report.json").read_text()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("radial_diffusers.evaluation.report._write_mp4", broken)
    with pytest.raises(OSError, match="disk full"):
        result.write(out, overwrite=True)
    assert (out / "report.json").read_text() == before  # the old report is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(result, tmp_path):
    """Every picture and video of the page loads in the browser (each video decodes a frame of the mp4's pixel
    width), and the screenshot shows a page, not a blank one; a missing picture and an undecodable video are named."""
    import re

    import imageio.v3 as iio
    from PIL import Image
    from scripts import REPO, run_script

    index = result.write(tmp_path / "report")
    report = index.parent
    shot = tmp_path / "shot.png"
    out = run_script(REPO / "bench" / "screenshot_report.py", report, shot, "--height", "2000")
    sources = re.findall(r'<(?:img|video)[^>]* src="([^"]+)"', index.read_text())
    assert len(sources) == 1 + 2 * len(result.samples)  # the mask; per sample the video and the frame strip
    for src in sources:
        line = next(x for x in out.splitlines() if x.split()[1:2] == [src + ":"])
        assert "loaded" in line, line
        if src.endswith(".mp4"):
            assert f", {iio.imread(report / src, index=0).shape[1]} px wide" in line
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.std() > 10  # text, plots and frames, not a blank page

    (report / "mask.png").unlink()
    (report / "videos" / "sample-0.mp4").write_bytes(b"not an mp4")
    with pytest.raises(AssertionError, match="exited with 1") as failed:
        run_script(REPO / "bench" / "screenshot_report.py", report, shot)
    listed = {line.split()[1].rstrip(":"): line
              for line in str(failed.value).splitlines()[1:] if line.startswith(("img", "video"))}
    assert [src for src, line in listed.items() if "DID NOT LOAD" in line] == ["mask.png", "videos/sample-0.mp4"]
    assert len(listed) == len(sources)


# -- the CLI -------------------------------------------------------------------------------------------------------


def test_cli_eval_writes_the_report(tmp_path, capsys):
    from radial_diffusers.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny-wan", "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
                 "--prompt", "a cat", "--dense-steps", "0", "--quant", "int4-weight", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "radial" in text and "FAILED" in text and str(out / "index.html") in text
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["num_frames"] == 9 and data["samples"] == [{"prompt": "a cat", "seed": 0}]
    # enough to run it again: the model, the sizes, seeds and options the pipeline call does not show
    assert {k: data["settings"][k] for k in ("model", "height", "width", "seeds", "quant", "image")} == {
        "model": "tiny-wan", "height": 64, "width": 64, "seeds": [0], "quant": ["int4-weight"], "image": None}
    assert data["environment"]["dtype"] == "torch.float32"


@pytest.mark.parametrize("argv, message", [
    (["--quant", "int3"], "--quant int3: unknown scheme"),
    (["--suggest", "--recall-rows", "0"], "--recall-rows must be > 0"),
    (["--lora", "/no/such.safetensors"], "--lora /no/such.safetensors: no such file"),
    (["--min-recall", "2"], "--min-recall must be in"),
    (["--dfloat11", "--dtype", "float32"], "--dfloat11 compresses BF16 weights losslessly, and this run loads the "
                                           "model in float32; add --dtype bfloat16"),
    (["--dfloat11", "/no/such/df11", "--dtype", "bfloat16"], "--dfloat11 /no/such/df11: no such file or directory"),
])
def test_cli_eval_bad_input(argv, message, capsys, tmp_path):
    from radial_diffusers.cli import main

    assert main(["eval", "--model", "tiny-wan", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_eval_loads_a_dfloat11_checkpoint(tmp_path, capsys):
    """`compress` writes a DF11 checkpoint; `eval --dfloat11 PATH` loads it as the variant's weights: bit for bit the
    radial video of the BF16 weights it was compressed from."""
    from radial_diffusers.cli import main

    df11 = tmp_path / "df11"
    assert main(["compress", "tiny-wan", str(df11), "--cast-bf16"]) == 0
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny-wan", "--dtype", "bfloat16", "--frames", "9", "--height", "64", "--width",
                 "64", "--steps", "2", "--recall-rows", "0", "--dfloat11", str(df11), "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    variant = next(v for v in data["variants"] if v["name"] == "radial+dfloat11")
    assert variant["status"] == "ok" and variant["identical_to"] == {"radial": True}
    assert data["settings"]["dfloat11"] == str(df11)
    capsys.readouterr()
    # one checkpoint cannot stand for two experts: refused once the pipeline shows them, before any video
    assert main(["eval", "--model", "tiny-wan2.2", "--dtype", "bfloat16", "--dfloat11", str(df11), "--out",
                 str(tmp_path / "two")]) == 2
    assert "a DF11 checkpoint replaces one transformer, and tiny-wan2.2 has 2 experts" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()


def test_cli_eval_guidance_of_a_guider_pipeline(tmp_path):
    """HunyuanVideo-1.5 guides through its guider (its call takes no guidance_scale): --guidance-scale goes there,
    and the report records the value used."""
    from radial_diffusers.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny-hunyuan1.5", "--frames", "5", "--height", "64", "--width", "64", "--steps",
                 "1", "--recall-rows", "0", "--guidance-scale", "3", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["guidance_scale"] == 3.0
    assert all(v["status"] == "ok" for v in data["variants"])


def test_cli_eval_suggest_that_reaches_nothing_runs_no_second_dense_variant(tmp_path, capsys):
    """A random model attends everywhere: at a 0.999 target every layer stays dense, which is the dense reference;
    eval says so instead of running it again as 'suggested' (whose every-layer-dense config would then warn to lower
    the dense layers it proposed)."""
    from radial_diffusers.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny-wan", "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
                 "--suggest", "--min-recall", "0.999", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no candidate reaches it; proposed: every layer dense" in captured.out
    assert "no 'suggested' variant is run" in captured.err and "warning" not in captured.err
    data = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["dense", "radial"]
    assert data["settings"]["suggestion"]["reached"] is False


def test_cli_eval_refuses_an_existing_folder(tmp_path, capsys):
    from radial_diffusers.cli import main

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert main(["eval", "--model", "tiny-wan", "--out", str(tmp_path / "x")]) == 2
    assert "exists; choose a new folder or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_generate_compare_dense(tmp_path, capsys):
    from radial_diffusers.cli import main

    out = tmp_path / "v.mp4"
    assert main(["generate", "--model", "tiny-wan", "--frames", "33", "--height", "64", "--width", "64", "--steps",
                 "3", "--dense-steps", "1", "--compare", "dense", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    compare = report["compare"]
    assert Path(compare["dense_video"]).is_file() and len(compare["dense_step_seconds"]) == 3
    assert 10 < compare["psnr_db"] < 100 and 0 < compare["ssim"] <= 1
    assert "--compare dense: radial" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny-wan", "--attention", "dense", "--compare", "dense",
                 "--out", str(tmp_path / "w.mp4")]) == 2
    assert "drop --attention dense" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in random_tiny_models() if n != "tiny-wan"])  # tiny-wan: above
def test_evaluate_and_recall_on_other_families(name):
    """Every other tiny pipeline: joint text + video sequences (padded text keys), packed tokens, the block-causal
    frame mask, two experts, image-to-video: the probe sees every self-attention call and the dense-trajectory run
    works through each family's radial q/k path."""
    from tiny_calls import call_kwargs

    pipe = load_tiny(name)
    kwargs = call_kwargs(pipe, name, batch=1)
    frames, height, width = (kwargs.pop(k, None) for k in ("num_frames", "height", "width"))
    if name == "tiny-wan2.2-ti2v":  # its registry geometry (33 frames at 256x256) takes 50 s here; still sparse
        frames = 17
    result = evaluate(pipe, "a cat", variants=default_variants(rd.RadialConfig(block_size=16, dense_layers=0,
                                                                               dense_steps=1)),
                      num_frames=frames, height=height, width=width, num_inference_steps=2, call_kwargs=kwargs,
                      recall_rows=8, progress=False)
    radial = result.variant("radial")
    assert radial.status == "ok", radial.error
    (rec,) = result.recall.values()
    values = [v for row in rec["matrix"] for v in row]
    assert values and all(v is not None and 0 < v <= 1 + 1e-6 for v in values)
    assert radial.recall is not None and 0 < radial.density <= 1


def _random_lora(folder: Path) -> Path:
    """A LoRA on tiny-wan's attention projections with random (non-zero) A and B, saved as Diffusers saves one."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_tiny("tiny-wan")
    torch.manual_seed(1)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    type(pipe).save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    return folder / "pytorch_lora_weights.safetensors"


def test_lora_variant_and_its_recall_are_measured_with_the_lora(tmp_path):
    pipe = load_tiny("tiny-wan")
    kwargs = dict(GEOMETRY, call_kwargs=default_call_kwargs("tiny-wan"))
    before = evaluate(pipe, "a cat", variants=[Variant("dense")], progress=False, **kwargs).videos["dense"][0]
    lora = _random_lora(tmp_path / "lora")
    result = evaluate(pipe, "a cat", variants=default_variants(CFG, lora=str(lora)), progress=False, **kwargs)
    radial, with_lora = result.variant("radial"), result.variant("radial+lora")
    assert with_lora.status == "ok", with_lora.error
    assert not np.array_equal(result.videos["radial"][0], result.videos["radial+lora"][0])
    # two recall passes: the mask along the base model's dense trajectory, and along the LoRA model's
    assert len(result.recall) == 2
    (label,) = [k for k, rec in result.recall.items() if rec["lora"] == str(lora)]
    assert "LoRA" in label and with_lora.recall is not None and 0 < with_lora.recall < 1
    assert with_lora.recall != pytest.approx(radial.recall, abs=1e-6)  # the LoRA changed q and k
    # the pipeline is left as it was: no adapter, no PEFT layer, the same dense video
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert not getattr(pipe.transformer, "peft_config", None)
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())
    after = evaluate(pipe, "a cat", variants=[Variant("dense")], progress=False, **kwargs).videos["dense"][0]
    assert np.array_equal(before, after)


def test_a_failed_recall_pass_is_reported_and_the_variants_stand(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("probe broke")

    monkeypatch.setattr(RecallProbe, "observe", broken)
    pipe = load_tiny("tiny-wan")
    result = evaluate(pipe, "a cat", variants=default_variants(CFG), progress=False,
                      **_call())
    radial = result.variant("radial")
    assert radial.status == "ok" and radial.psnr_mean is not None and radial.recall is None
    (rec,) = result.recall.values()
    assert rec["error"] == "RuntimeError: probe broke"
    page = result.write(tmp_path / "report").read_text()
    assert "The recall pass of the mask" in page and "probe broke" in page
    with pytest.raises(RuntimeError, match="the recall pass failed: RuntimeError: probe broke"):
        suggest_config(pipe, "a cat", progress=False, **_call())


def test_cli_eval_image_to_video(tmp_path, capsys):
    from PIL import Image

    from radial_diffusers.cli import main

    args = ["eval", "--model", "tiny-wan-i2v", "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
            "--prompt", "a cat", "--dense-steps", "0", "--block-size", "16", "--recall-rows", "4"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "--image is required for the image-to-video model tiny-wan-i2v" in capsys.readouterr().err
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    assert main([*args, "--image", str(image), "--out", str(tmp_path / "b")]) == 0
    data = json.loads((tmp_path / "b" / "report.json").read_text())
    radial = next(v for v in data["variants"] if v["name"] == "radial")
    assert radial["status"] == "ok" and 0 < radial["density"] < 1
    assert main(["eval", "--model", "tiny-wan", "--image", str(image), "--out", str(tmp_path / "c")]) == 2
    assert "is a text-to-video model" in capsys.readouterr().err


def test_nan_video_fails_its_variant_and_all_dense_configs_time_dense_steps(monkeypatch):
    """A variant whose attention returns NaN is a failed variant (it was PSNR "inf (identical)"); a config that keeps
    every layer dense times its steps as dense ones (they were filed as sparse)."""
    import radial_diffusers.processors as processors

    real = processors.block_sparse_attention

    def nan_at_block_32(q, k, v, layout, **kw):
        out = real(q, k, v, layout, **kw)
        return out * float("nan") if layout.block_size == 32 else out

    monkeypatch.setattr(processors, "block_sparse_attention", nan_at_block_32)
    variants = [Variant("dense"), Variant("radial", rd.RadialConfig(block_size=16, dense_layers=0, dense_steps=1)),
                Variant("all-dense", rd.RadialConfig(block_size=16, dense_layers=2, dense_steps=1)),
                Variant("nan", rd.RadialConfig(block_size=32, dense_layers=0, dense_steps=1))]
    result = evaluate(load_tiny("tiny-wan"), "a cat", variants=variants, recall_rows=0, progress=False, **_call())
    nan = result.variant("nan")
    assert nan.status == "failed" and "NaN / inf pixels" in nan.error and nan.psnr_mean is None
    radial, all_dense = result.variant("radial"), result.variant("all-dense")
    assert radial.sparse_step_seconds is not None and radial.status == "ok"
    assert all_dense.sparse_step_seconds is None and all_dense.dense_step_seconds is not None
    assert all_dense.density == 1.0


def test_finite_mean_keeps_nan():
    import math

    from radial_diffusers.evaluation.metrics import finite_mean

    assert finite_mean([30.0, float("inf"), 40.0]) == 35.0 and finite_mean([float("inf")]) == math.inf
    assert math.isnan(finite_mean([30.0, float("nan"), float("inf")]))


def test_report_into_an_empty_folder_a_link_or_the_current_folder(tmp_path, monkeypatch):
    """An empty folder is written into as a new one (its mode kept), a link to one through the link; the current
    folder is never replaced, empty or not."""
    import os

    from radial_diffusers.errors import ConfigError
    from radial_diffusers.evaluation import report

    monkeypatch.setattr(report, "_write", lambda result, folder, fps: (folder / "index.html").write_text("x"))
    target = tmp_path / "target"
    target.mkdir()
    os.chmod(target, 0o2750)
    (tmp_path / "link").symlink_to(target)
    assert report.write_report(None, tmp_path / "link") == target / "index.html"
    assert (tmp_path / "link").is_symlink() and os.listdir(target) == ["index.html"]
    assert os.stat(target).st_mode & 0o7777 == 0o2750
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", here):
        with pytest.raises(ConfigError, match="is the current folder or contains it"):
            report.write_report(None, out)
    assert os.listdir(here) == [] and Path.cwd() == here
