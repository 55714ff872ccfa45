"""torchao quantization of the tiny transformers (CPU): radial pipelines, error bounds, exclusions, save/reload, LoRA."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

pytest.importorskip("torchao")
warnings.filterwarnings("ignore")

import radial_diffusers as rd  # noqa: E402
from radial_diffusers.quant import SCHEMES, check_lora_trainable, supported_schemes  # noqa: E402
from radial_diffusers.tiny import default_call_kwargs, load_tiny  # noqa: E402

CPU_SCHEMES = ["int8-weight", "int8-dynamic", "fp8-weight", "int4-weight-cpu"]
# relative error of the 3-step radial pipeline output vs the BF16 model (measured: <= 0.016 / 0.016 / 0.018 / 0.023)
BOUND = {"int8-weight": 0.05, "int8-dynamic": 0.05, "fp8-weight": 0.06, "int4-weight-cpu": 0.1}
GEOMETRY = {"tiny-wan": dict(num_frames=17, height=64, width=64), "tiny-hunyuan": dict(num_frames=17, height=32, width=32)}
GROUP = 4  # tiny models have 20-, 24- and 100-wide inputs


def _run(pipe, name):
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16))
    with torch.no_grad():
        out = pipe(prompt="a cat dancing", generator=torch.Generator().manual_seed(0), num_inference_steps=3,
                   output_type="latent", **GEOMETRY[name], **default_call_kwargs(name)).frames.float()
    assert sum(state.sparse_calls.values()) > 0
    return out


@pytest.fixture(scope="module")
def reference():
    return {name: _run(load_tiny(name, 0, dtype=torch.bfloat16), name) for name in GEOMETRY}


def _is_quantized(linear) -> bool:
    return type(linear.weight).__module__.startswith("torchao")


@pytest.mark.parametrize("name", list(GEOMETRY))
@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_radial_pipeline_on_quantized_transformer(reference, name, scheme):
    pipe = load_tiny(name, 0, dtype=torch.bfloat16)
    rd.quantize(pipe.transformer, scheme, group_size=GROUP)
    out = _run(pipe, name)
    err = ((out - reference[name]).norm() / reference[name].norm()).item()
    assert 0 < err < BOUND[scheme], err


def test_default_exclusions():
    wan = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int8-weight")
    assert _is_quantized(wan.blocks[0].attn1.to_q) and _is_quantized(wan.blocks[1].ffn.net[2])
    for linear in (wan.proj_out, wan.condition_embedder.text_embedder.linear_1,
                   wan.condition_embedder.time_embedder.linear_1, wan.condition_embedder.time_proj):
        assert not _is_quantized(linear) and linear.weight.dtype in (torch.bfloat16, torch.float32)
    hy = rd.quantize(load_tiny("tiny-hunyuan", 0, dtype=torch.bfloat16).transformer, "int8-weight")
    assert _is_quantized(hy.single_transformer_blocks[0].proj_out)  # a block's proj_out is not the final one
    assert _is_quantized(hy.transformer_blocks[0].attn.add_q_proj)
    for linear in (hy.proj_out, hy.norm_out.linear, hy.transformer_blocks[0].norm1.linear,
                   hy.single_transformer_blocks[0].norm.linear, hy.x_embedder.proj,
                   hy.context_embedder.token_refiner.refiner_blocks[0].attn.to_q):
        assert not isinstance(linear, torch.nn.Linear) or not _is_quantized(linear)
    custom = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int8-weight",
                         exclude=[*rd.quant.DEFAULT_EXCLUDE, r"blocks\.0\..*"])
    assert not _is_quantized(custom.blocks[0].attn1.to_q) and _is_quantized(custom.blocks[1].attn1.to_q)


def test_errors_leave_the_model_unchanged():
    t = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
    before = {k: v.clone() for k, v in t.state_dict().items()}
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        rd.quantize(t, "int3")
    for gpu_only in ("fp8-dynamic", "int4-weight"):
        with pytest.raises(ValueError, match="not supported on cpu.*Supported here: int8-weight"):
            rd.quantize(t, gpu_only)
    with pytest.raises(ValueError, match="bad exclude regex"):
        rd.quantize(t, "int8-weight", exclude=["("])
    after = t.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    rd.quantize(t, "int8-weight")
    with pytest.raises(ValueError, match="already quantized"):
        rd.quantize(t, "fp8-weight")
    assert set(supported_schemes("cpu")) == set(CPU_SCHEMES)


def test_dfloat11_and_quantization_are_alternatives(tmp_path):
    from radial_diffusers.dfloat11 import compress, load_dfloat11

    t = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
    compress(t, tmp_path / "df11", progress=False)
    packed = load_dfloat11(copy.deepcopy(t), tmp_path / "df11", progress=False)
    with pytest.raises(ValueError, match="DFloat11-compressed"):
        rd.quantize(packed, "int8-weight")
    rd.quantize(packed, "int8-weight", exclude=[r"blocks\..*"])  # only the non-DF11 Linears: allowed
    assert _is_quantized(packed.proj_out)
    q = rd.quantize(copy.deepcopy(t), "int8-weight")
    with pytest.raises(ValueError, match="alternatives per weight"):
        load_dfloat11(q, tmp_path / "df11", progress=False)


@pytest.mark.parametrize("scheme", ["int8-weight", "int4-weight-cpu"])
def test_save_and_reload_through_from_pretrained(tmp_path, scheme):
    from diffusers import WanTransformer3DModel

    load_tiny("tiny-wan", 0).transformer.save_pretrained(tmp_path / "bf16")
    config = rd.quantization_config(scheme, group_size=GROUP)
    q = WanTransformer3DModel.from_pretrained(tmp_path / "bf16", quantization_config=config, torch_dtype=torch.bfloat16)
    assert _is_quantized(q.blocks[0].attn1.to_q) and not _is_quantized(q.proj_out)
    q.save_pretrained(tmp_path / "q")
    again = WanTransformer3DModel.from_pretrained(tmp_path / "q")
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g).bfloat16(), torch.randn(1, 7, 32, generator=g).bfloat16()
    t = torch.tensor([500.0])
    with torch.no_grad():
        assert torch.equal(q(x, t, text).sample, again(x, t, text).sample)
    pipeline_config = rd.quantization_config(scheme, group_size=GROUP, components=("transformer",))
    assert "transformer" in pipeline_config.quant_mapping


def test_lora_on_weight_only_base_matches_bf16_gradients():
    from peft import LoraConfig

    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g).bfloat16(), torch.randn(1, 7, 32, generator=g).bfloat16()
    t = torch.tensor([500.0])

    def grads(scheme):
        m = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
        if scheme:
            rd.quantize(m, scheme, group_size=GROUP)
        m.requires_grad_(False)
        torch.manual_seed(0)
        m.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                 init_lora_weights=False))
        check_lora_trainable(m)
        m(x, t, text).sample.float().square().mean().backward()
        return torch.cat([p.grad.float().flatten() for n, p in sorted(m.named_parameters()) if p.grad is not None])

    ref = grads(None)
    for scheme in ("int8-weight", "fp8-weight", "int4-weight-cpu"):
        got = grads(scheme)
        assert ((got - ref).norm() / ref.norm()).item() < 0.1, scheme

    m = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int8-dynamic")
    with pytest.raises(ValueError, match="weight-only scheme"):
        check_lora_trainable(m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp8-dynamic and int4-weight need a CUDA GPU")
@pytest.mark.parametrize("scheme", [s for s, spec in SCHEMES.items() if spec.needs_cuda])
def test_gpu_schemes(scheme):
    if scheme not in supported_schemes("cuda"):
        pytest.skip(f"{scheme} is not supported by this GPU")
    t = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer.cuda()
    ref = copy.deepcopy(t)
    rd.quantize(t, scheme, group_size=32 if scheme == "int4-weight" else 128)
    x, text = torch.randn(1, 16, 3, 8, 8).bfloat16().cuda(), torch.randn(1, 7, 32).bfloat16().cuda()
    ts = torch.tensor([500.0]).cuda()
    with torch.no_grad():
        a, b = t(x, ts, text).sample.float(), ref(x, ts, text).sample.float()
    assert ((a - b).norm() / b.norm()).item() < 0.1


def test_cli_quantize_saves_a_reloadable_transformer_and_generate_quant(tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    from radial_diffusers.cli import main

    out = tmp_path / "q"
    assert main(["quantize", "tiny-wan", str(out), "--scheme", "int4-weight-cpu", "--group-size", "4"]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    model = WanTransformer3DModel.from_pretrained(out)
    assert _is_quantized(model.blocks[0].attn1.to_k) and not _is_quantized(model.proj_out)
    assert main(["quantize", "tiny-wan", str(out), "--scheme", "int8-weight"]) == 2  # exists
    assert main(["quantize", "tiny-wan", str(tmp_path / "x"), "--scheme", "fp8-dynamic"]) == 2
    assert "not supported on cpu" in capsys.readouterr().err
    video = tmp_path / "v.mp4"
    assert main(["generate", "--quant", "int8-weight", "--frames", "9", "--height", "64", "--width", "64",
                 "--steps", "2", "--out", str(video)]) == 0
    import json

    assert json.loads(video.with_suffix(".json").read_text())["quant"] == "int8-weight"
    assert main(["generate", "--quant", "int8-weight", "--dfloat11", str(out), "--out", str(video)]) == 2


def test_training_on_quantized_base(tmp_path):
    import imageio
    import numpy as np

    from lora_training import ConfigError, load_config
    from lora_training.train import train

    data = tmp_path / "clips"
    data.mkdir()
    frames = [np.full((64, 64, 3), 10 * t, np.uint8) for t in range(20)]
    imageio.mimwrite(data / "a.mp4", frames, fps=16, macro_block_size=1)
    (data / "a.txt").write_text("a cat")
    base = dict(model="tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), num_frames=17, height=64,
                width=64, rank=4, block_size=16, mixed_precision="bf16", max_steps=2, quant="int8-weight")
    final = train(load_config(base), progress=False)
    assert (final / "pytorch_lora_weights.safetensors").exists()
    with pytest.raises(ConfigError, match="weight-only scheme"):
        load_config({**base, "quant": "int8-dynamic"})
    with pytest.raises(ConfigError, match="alternatives"):
        load_config({**base, "dfloat11": "somewhere"})


def test_quality_bench_runs():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "quant.py"), "--skip-layers"], capture_output=True,
                          text=True, cwd=repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int4-weight-cpu" in proc.stdout and "tiny-hunyuan" in proc.stdout
    proc = subprocess.run([sys.executable, str(repo / "bench" / "quant.py"), "--cpu-dry-run"], capture_output=True,
                          text=True, cwd=repo, timeout=600)  # the --gpu code path, one block on CPU
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "radial + int8-weight" in proc.stdout and "bf16 dense" in proc.stdout
