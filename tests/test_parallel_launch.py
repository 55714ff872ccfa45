"""Radial attention under context parallelism, launched as a user launches it: four processes (Ulysses 2 x ring 2),
`torchrun ... generate --ring 2`, and the parallel benchmark's dry run (gloo on CPU; see tests/test_parallel.py for
the tolerance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import parallel_worker
import pytest
import torch
from test_parallel import REPO, RTOL, RTOL_BY_MODEL, _assert_matches, _torchrun

# Ulysses 2 x ring 2 runs one tiny model per kind of plan (the two-process test runs every family under each):
# Diffusers' Wan plan with per-token timesteps (TI2V-5B), ours for text after the video (HunyuanVideo), before it
# (CogVideoX), per-sample padded text (Mochi), cross-attention text (LTX-Video), the gather before the output layer
# (Kandinsky 5), per-token modulation (SkyReels-V2 diffusion forcing), the control branch (Wan VACE) and dense calls
# through our op (Cosmos, whose stock processor takes no parallel config)
FOUR = ("tiny-wan", "tiny-wan2.2-ti2v", "tiny-hunyuan", "tiny-cogvideox", "tiny-mochi", "tiny-ltx", "tiny-kandinsky5",
        "tiny-skyreels-v2-df", "tiny-wan-vace", "tiny-cosmos2")


@pytest.fixture(scope="module")
def single():
    return {name: parallel_worker.run_case(name, None, latent=True) for name in FOUR}


def test_four_processes_unified_equals_one_process(tmp_path, single):
    """Ulysses 2 x ring 2 on four gloo processes, a tiny model of each kind of plan: as on two processes (the
    denoised latents instead of the decoded video: the VAE is not parallel, the two-process test decodes)."""
    assert set(FOUR) <= set(parallel_worker.FAMILIES)
    results = _torchrun(tmp_path, 4, "2x2", "--latent", "--only=" + ",".join(FOUR))
    assert sorted(name for name, *_ in results) == sorted(FOUR)
    for (name, u, r, _), got in results.items():
        _assert_matches(got, single[name], f"{name} ulysses {u} ring {r}", RTOL_BY_MODEL.get(name, RTOL))


def _frames(path: Path):
    import imageio.v3 as iio

    return torch.from_numpy(iio.imread(path)).float()


def test_cli_generate_under_torchrun_equals_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m radial_diffusers generate --ring 2`: rank 0 writes one video (and the report
    records the parallel run) equal to the single-process video; outside torchrun the flags name the launch."""
    from radial_diffusers.cli import main

    common = ["generate", "--model", "tiny-wan", "--frames", "17", "--height", "64", "--width", "64", "--steps", "2",
              "--dense-steps", "1"]
    assert main([*common, "--out", str(tmp_path / "one.mp4")]) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "radial_diffusers", *common, "--ring", "2", "--out", str(tmp_path / "two.mp4")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == [
        "two.json", "two.mask.png", "two.mp4"]
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["parallel"] == {"ulysses": 1, "ring": 2, "world_size": 2, "process_group_backend": "gloo"}
    assert report["sparse_steps"] == 1
    one, two = _frames(tmp_path / "one.mp4"), _frames(tmp_path / "two.mp4")
    assert one.shape == two.shape and (one - two).abs().max() <= 2  # uint8 video, encoded: a level or two at most


def test_cli_parallel_flags_outside_torchrun_name_the_launch(capsys):
    from radial_diffusers.cli import main

    assert main(["generate", "--model", "tiny-wan", "--ulysses", "2", "--ring", "2", "--out", "x.mp4"]) == 2
    assert "torchrun --nproc-per-node 4 -m radial_diffusers generate --ulysses 2 --ring 2" in capsys.readouterr().err


def test_parallel_bench_dry_run(tmp_path):
    """bench/parallel.py on two CPU processes (the tiny Wan model): a record per mode and attention; the summary's
    speedup and efficiency against a one-process record."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "par.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "bench" / "parallel.py"), "--cpu-dry-run", "--repeats", "1", "--attention", "radial",
         "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = json.loads(out.read_text())
    assert sorted((r["world"], r["mode"], r["attention"]) for r in records) == [(2, "ring", "radial"),
                                                                                (2, "ulysses", "radial")]
    assert all(r["seconds"] > 0 for r in records)
    assert all(r["density"] < 1 for r in records if r["attention"] == "radial")
    # the summary against a one-process record of the same model (made up here: 3x the two-process ring step)
    sys.path.insert(0, str(REPO / "bench"))
    from parallel import summary

    ring = next(r for r in records if r["mode"] == "ring" and r["attention"] == "radial")
    table = summary(records + [dict(ring, world=1, mode="single", ulysses=1, ring=1, seconds=3 * ring["seconds"])])
    assert "| 2 | ring (U1 x R2) | radial |" in table and "| 3.00x | 150% |" in table
