"""The example scripts run end to end on the tiny offline models and write a playable video."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,size", [("wan_t2v_long_video.py", 64), ("hunyuan_t2v_long_video.py", 64),
                                         ("wan_t2v_dfloat11.py", 64), ("ltx2_long_video.py", 64),
                                         ("kandinsky5_long_video.py", 64), ("cosmos_long_video.py", 64)])
def test_example_runs_on_tiny_model(tmp_path, script, size):
    out = tmp_path / "video.mp4"
    cmd = [sys.executable, str(ROOT / "examples" / script), "--tiny", "--frames", "33", "--height", str(size),
           "--width", str(size), "--steps", "3", "--out", str(out)]
    # the environment a CPU user has: no TRITON_INTERPRET (the conftest sets it for the in-process kernel tests), so
    # attention takes the PyTorch path and DF11 decodes with the CPU codec
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "density" in result.stdout
    frames = imageio.mimread(out, memtest=False)
    assert len(frames) == 33 and frames[0].shape[:2] == (size, size)


def test_multi_gpu_example_on_two_cpu_processes(tmp_path):
    """examples/multi_gpu_long_video.py under torchrun (gloo): rank 0 writes the video."""
    out = tmp_path / "video.mp4"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "examples" / "multi_gpu_long_video.py"), "--tiny", "--ring", "2", "--frames", "17",
           "--steps", "2", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 processes (ulysses 1 x ring 2)" in result.stdout
    frames = imageio.mimread(out, memtest=False)
    assert len(frames) == 17 and frames[0].shape[:2] == (64, 64)
