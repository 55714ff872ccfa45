"""LoRA training on several gloo processes under torchrun: DDP on a quantized base, FSDP against DDP, and sequence
parallelism against one process (each with an exact resume where the run is checkpointed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_training import load_config
from lora_training.train import train
from train_helpers import checkpoint_lora

REPO = Path(__file__).resolve().parents[1]


def _torchrun(cfg_path: Path, *args: str, accelerate: bool = False) -> dict:
    """Two gloo processes under torchrun (or ``accelerate launch --multi_gpu``, which launches them the same way on
    CPU); returns the run's train_report.json. A free rendezvous port (``--standalone``, ``--main_process_port 0``),
    so parallel test workers never meet on the default 29500."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                 "0"] if accelerate else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])
    proc = subprocess.run(
        [*launcher, "-m", "lora_training.train", str(cfg_path), *args],
        capture_output=True, text=True, env=env, cwd=cfg_path.parent, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cfg_path.parent / yaml_value(cfg_path, "output_dir")
    return json.loads((out / "train_report.json").read_text())


def yaml_value(path: Path, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith(key + ":"))


def _two_process_config(tmp_path, data_dir, name: str, extra: str, model: str = "tiny-wan") -> Path:
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(
        f"model: {model}\ndata_dir: {data_dir}\noutput_dir: {name}\ncache_dir: cache\nnum_frames: 17\nheight: 64\n"
        "width: 64\nrank: 4\nblock_size: 16\nmax_steps: 2\n" + extra
    )
    return cfg_path


def test_two_process_ddp_on_quantized_base(tmp_path, data_dir):
    """DDP shares only the LoRA: a torchao-quantized base cannot (and need not) be broadcast."""
    pytest.importorskip("torchao")
    report = _torchrun(_two_process_config(tmp_path, data_dir, "ddp", "checkpoint_every: 2\nmixed_precision: bf16\n"
                                           "quant: int8-weight\n"))
    assert report["processes"] == 2 and len(report["losses"]) == 2 and report["distributed"] == "ddp"
    assert (tmp_path / "ddp" / "checkpoints" / "step-0000002" / "lora.safetensors").exists()


def test_fsdp_shards_the_base_equals_ddp_and_resumes(tmp_path, data_dir):
    """distributed: fsdp on two gloo processes: each holds about half of the sharded base, the run (losses, LoRA)
    equals the DDP run bit for bit, the validation render (all ranks take part) is written, and a resumed FSDP run
    ends on the same weights."""
    common = "checkpoint_every: 1\nmixed_precision: bf16\nvalidate_every: 2\nvalidation_steps: 2\nvalidation_frames: 5\n"
    ddp = _torchrun(_two_process_config(tmp_path, data_dir, "ddp", common + "distributed: ddp\n"))
    fsdp_cfg = _two_process_config(tmp_path, data_dir, "fsdp", common + "distributed: fsdp\n")
    fsdp = _torchrun(fsdp_cfg)
    assert ddp["processes"] == fsdp["processes"] == 2 and fsdp["distributed"] == "fsdp"
    assert fsdp["losses"] == ddp["losses"]
    # the bf16 weights are halved; the fp32-kept norms and modulation tables (about 40% of this tiny model, well under
    # 1% of Wan2.1-14B) stay replicated
    assert 0.6 * fsdp["base_bytes"] <= fsdp["base_bytes_here"] <= 0.75 * fsdp["base_bytes"]

    def lora(run):
        return load_file(str(tmp_path / run / "final" / "pytorch_lora_weights.safetensors"))

    want = lora("ddp")
    assert want and all(torch.equal(v, want[k]) for k, v in lora("fsdp").items())
    assert (tmp_path / "fsdp" / "validation" / "step-0000002.mp4").stat().st_size > 0
    import shutil

    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step-0000002")
    shutil.rmtree(tmp_path / "fsdp" / "final")
    resumed = _torchrun(fsdp_cfg, "--resume", "latest")
    assert resumed["steps"] == [2, 2] and resumed["losses"] == ddp["losses"][1:]
    assert all(torch.equal(v, want[k]) for k, v in lora("fsdp").items())


def test_sequence_parallel_two_processes_equals_one_and_resumes(tmp_path, data_dir):
    """sequence_parallel: 2 on two gloo processes launched by ``accelerate launch``, on HunyuanVideo (a joint text +
    video sequence: each rank holds a chunk of the video and of the text; Ulysses, radial attention): the losses and
    the LoRA equal the single-process run's within float32 rounding (the gradient is the sum of two shards' partial
    gradients, reduced in another order: measured at most 6.2e-7 relative; asserted 1e-5), and a run resumed under
    torchrun from its step-1 checkpoint ends on the same LoRA bit for bit."""
    extra = "checkpoint_every: 1\nmixed_precision: 'no'\n"
    single_cfg = _two_process_config(tmp_path, data_dir, "single", extra, model="tiny-hunyuan")
    train(load_config(single_cfg), progress=False)
    single = json.loads((tmp_path / "single" / "train_report.json").read_text())
    sp_cfg = _two_process_config(tmp_path, data_dir, "sp", extra + "sequence_parallel: 2\n", model="tiny-hunyuan")
    report = _torchrun(sp_cfg, accelerate=True)
    assert report["processes"] == 2 and report["sequence_parallel"] == 2
    torch.testing.assert_close(torch.tensor(report["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=0)
    want, got = checkpoint_lora(tmp_path / "single"), checkpoint_lora(tmp_path / "sp")
    for k, v in want.items():
        assert (got[k] - v).abs().max() <= 1e-5 * v.abs().max(), k
    import shutil

    shutil.rmtree(tmp_path / "sp" / "checkpoints" / "step-0000002")
    shutil.rmtree(tmp_path / "sp" / "final")
    resumed = _torchrun(sp_cfg, "--resume", "latest")
    assert resumed["steps"] == [2, 2]
    assert all(torch.equal(v, got[k]) for k, v in checkpoint_lora(tmp_path / "sp").items())
