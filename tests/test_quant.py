"""torchao quantization of the tiny transformers (CPU): radial pipelines, error bounds, exclusions, save/reload, LoRA."""

from __future__ import annotations

import copy
import json
import re
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


# Linears the default exclusions keep out (module names; None: not an nn.Linear in that model)
EXCLUDED = {
    "tiny-wan": ["proj_out", "condition_embedder.text_embedder.linear_1", "condition_embedder.time_embedder.linear_1",
                 "condition_embedder.time_proj"],
    "tiny-hunyuan": ["proj_out", "norm_out.linear", "transformer_blocks.0.norm1.linear",
                     "single_transformer_blocks.0.norm.linear", "x_embedder.proj",
                     "context_embedder.token_refiner.refiner_blocks.0.attn.to_q"],
}
# Linears that must be quantized (a block's proj_out is not the final one)
INCLUDED = {"tiny-wan": ["blocks.0.attn1.to_q", "blocks.1.ffn.net.2"],
            "tiny-hunyuan": ["single_transformer_blocks.0.proj_out", "transformer_blocks.0.attn.add_q_proj"]}


def _quantized_names(model) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _is_quantized(m)}


def _check_exclusions(model, name):
    for fqn in INCLUDED[name]:
        assert _is_quantized(model.get_submodule(fqn)), fqn
    for fqn in EXCLUDED[name]:
        linear = model.get_submodule(fqn)
        assert not isinstance(linear, torch.nn.Linear) or not _is_quantized(linear), fqn
        if isinstance(linear, torch.nn.Linear):
            assert linear.weight.dtype in (torch.bfloat16, torch.float32), fqn


@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_default_exclusions(scheme):
    for name in GEOMETRY:
        _check_exclusions(rd.quantize(load_tiny(name, 0, dtype=torch.bfloat16).transformer, scheme, group_size=GROUP),
                          name)
    custom = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, scheme, group_size=GROUP,
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


@pytest.mark.parametrize("seed", [0, 1])
def test_prequantized_linears_and_bad_group_sizes_refused_before_any_change(seed):
    from torch import nn
    from torchao.quantization import Float8WeightOnlyConfig, quantize_

    t = load_tiny("tiny-wan", seed, dtype=torch.bfloat16).transformer
    linears = [n for n, m in t.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    chosen = linears[torch.randint(len(linears), (1,), generator=torch.Generator().manual_seed(seed)).item()]
    quantize_(t, Float8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == chosen)  # by hand, one Linear
    kinds = {n: type(m.weight).__name__ for n, m in t.named_modules() if isinstance(m, nn.Linear)}
    plain = {k: v.clone() for k, v in t.state_dict().items() if not type(v).__module__.startswith("torchao")}
    with pytest.raises(ValueError, match=rf"{chosen.replace('.', '[.]')} is already torchao-quantized"):
        rd.quantize(t, "int8-weight")
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="group_size must be a positive integer"):
            rd.quantize(t, "int4-weight-cpu", group_size=bad)
        with pytest.raises(ValueError, match="group_size must be a positive integer"):
            rd.quantization_config("int4-weight-cpu", group_size=bad, device="cpu")
    assert {n: type(m.weight).__name__ for n, m in t.named_modules() if isinstance(m, nn.Linear)} == kinds
    assert all(torch.equal(plain[k], t.state_dict()[k]) for k in plain)
    assert rd.quant.quantized_scheme(t) is None
    # excluding the hand-quantized Linear makes the rest quantizable
    rd.quantize(t, "int8-weight", exclude=[*rd.quant._patterns(None, t), re.escape(chosen)])
    assert type(t.get_submodule(chosen).weight).__name__ == kinds[chosen]


def test_save_pretrained_after_quantize_refused_without_writing(tmp_path):
    t = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int8-weight")
    with pytest.raises(RuntimeError, match="quantization_config"):
        t.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(RuntimeError, match="Nothing was written"):
        copy.deepcopy(t).save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_cli_quantize_refuses_to_overwrite_its_source(tmp_path, capsys):
    from radial_diffusers.cli import main

    pipe = tmp_path / "pipe"
    load_tiny("tiny-wan", 0).save_pretrained(pipe)
    before = sorted(str(p.relative_to(pipe)) for p in pipe.rglob("*"))
    for out in (pipe, pipe / "transformer"):  # the pipeline root contains the source, its transformer/ is it
        assert main(["quantize", str(pipe), str(out), "--scheme", "int8-weight", "--overwrite"]) == 2
        assert "source model folder" in capsys.readouterr().err
    assert sorted(str(p.relative_to(pipe)) for p in pipe.rglob("*")) == before


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


def _transformer_inputs(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name == "tiny-wan":
        return dict(hidden_states=torch.randn(1, 16, 3, 8, 8, generator=g).bfloat16(), timestep=torch.tensor([500.0]),
                    encoder_hidden_states=torch.randn(1, 7, 32, generator=g).bfloat16())
    return dict(hidden_states=torch.randn(1, 4, 3, 8, 8, generator=g).bfloat16(), timestep=torch.tensor([500.0]),
                encoder_hidden_states=torch.randn(1, 9, 16, generator=g).bfloat16(),
                encoder_attention_mask=torch.ones(1, 9, dtype=torch.bool),
                pooled_projections=torch.randn(1, 8, generator=g).bfloat16(), guidance=torch.tensor([6000.0]))


def _model_class(name):
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    return WanTransformer3DModel if name == "tiny-wan" else HunyuanVideoTransformer3DModel


@pytest.mark.parametrize("name", list(GEOMETRY))
@pytest.mark.parametrize("scheme", CPU_SCHEMES)
def test_save_and_reload_through_from_pretrained(tmp_path, scheme, name):
    cls = _model_class(name)
    load_tiny(name, 0).transformer.save_pretrained(tmp_path / "bf16")
    config = rd.quantization_config(scheme, group_size=GROUP)
    q = cls.from_pretrained(tmp_path / "bf16", quantization_config=config, torch_dtype=torch.bfloat16)
    _check_exclusions(q, name)  # load-time quantization respects the exclusions
    in_memory = rd.quantize(load_tiny(name, 0, dtype=torch.bfloat16).transformer, scheme, group_size=GROUP)
    assert _quantized_names(q) == _quantized_names(in_memory)
    q.save_pretrained(tmp_path / "q")
    again = cls.from_pretrained(tmp_path / "q")
    assert _quantized_names(again) == _quantized_names(q)
    _check_exclusions(again, name)
    inputs = _transformer_inputs(name, seed=torch.randint(0, 2**31, ()).item())
    with torch.no_grad():
        a, b, ref = q(**inputs).sample, again(**inputs).sample, in_memory(**inputs).sample
    assert torch.equal(a, b) and torch.equal(a, ref)


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_load_time_config_skips_what_quantize_skips(tmp_path, name):
    """int4 group size 16 does not divide the tiny models' 20-, 24- and 100-wide inputs: with model=..., the load-time
    config leaves those Linears unquantized exactly as quantize() does; without it torchao asserts during the load."""
    group = 16
    cls = _model_class(name)
    source = load_tiny(name, 0).transformer
    source.save_pretrained(tmp_path / "bf16")
    in_memory = rd.quantize(load_tiny(name, 0, dtype=torch.bfloat16).transformer, "int4-weight-cpu", group_size=group)
    skipped = {n for n, m in in_memory.named_modules() if isinstance(m, torch.nn.Linear) and not _is_quantized(m)
               and m.in_features % group}
    assert skipped and _quantized_names(in_memory)
    for model in (str(tmp_path / "bf16"), source, json.loads(source.to_json_string())):
        config = rd.quantization_config("int4-weight-cpu", group_size=group, model=model)
        q = cls.from_pretrained(tmp_path / "bf16", quantization_config=config, torch_dtype=torch.bfloat16)
        assert _quantized_names(q) == _quantized_names(in_memory)
        inputs = _transformer_inputs(name, seed=torch.randint(0, 2**31, ()).item())
        with torch.no_grad():
            assert torch.equal(q(**inputs).sample, in_memory(**inputs).sample)
    with pytest.raises(AssertionError, match="divisible"):  # the documented limitation without model=
        config = rd.quantization_config("int4-weight-cpu", group_size=group)
        cls.from_pretrained(tmp_path / "bf16", quantization_config=config, torch_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="divides none"):
        rd.quantization_config("int4-weight-cpu", group_size=128, model=source)
    with pytest.raises(ValueError, match="cannot read the config"):
        rd.quantization_config("int4-weight-cpu", group_size=group, model=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name,scheme", [("tiny-wan", "int8-weight"), ("tiny-wan", "int4-weight-cpu"),
                                         ("tiny-hunyuan", "fp8-weight")])
def test_pipeline_from_pretrained_with_pipeline_quantization_config(reference, tmp_path, name, scheme):
    from diffusers import DiffusionPipeline

    load_tiny(name, 0).save_pretrained(tmp_path / "pipe")
    config = rd.quantization_config(scheme, group_size=GROUP, components=("transformer",), model=tmp_path / "pipe")
    assert set(config.quant_mapping) == {"transformer"}
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe", quantization_config=config, torch_dtype=torch.bfloat16)
    _check_exclusions(pipe.transformer, name)
    assert _quantized_names(pipe.transformer) == _quantized_names(
        rd.quantize(load_tiny(name, 0, dtype=torch.bfloat16).transformer, scheme, group_size=GROUP))
    for component in ("text_encoder", "vae"):
        assert not any(_is_quantized(m) for m in getattr(pipe, component).modules()
                       if isinstance(m, torch.nn.Linear))
    out = _run(pipe, name)  # radial attention on the load-time quantized transformer
    err = ((out - reference[name]).norm() / reference[name].norm()).item()
    assert 0 < err < BOUND[scheme], err
    with pytest.raises(ValueError, match="several components"):
        rd.quantization_config(scheme, components=("transformer", "vae"), model=pipe.transformer)


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


def test_lora_refused_on_cuda_int4_weight():
    """PEFT cannot wrap torchao's CUDA int4 tensor: check_lora_trainable refuses it (faked on CPU: a model marked as
    int4-weight, and a Linear holding a tensor of torchao's CUDA int4 class), naming the schemes that allow LoRA."""
    assert rd.quant.LORA_SCHEMES == ("int8-weight", "fp8-weight", "int4-weight-cpu")
    allowed = "int8-weight, fp8-weight, int4-weight-cpu"
    assert rd.quant.lora_refusal("int8-weight") is None and rd.quant.lora_refusal("int4-weight-cpu") is None
    assert allowed in rd.quant.lora_refusal("int4-weight") and "PEFT" in rd.quant.lora_refusal("int4-weight")
    for dynamic in ("int8-dynamic", "fp8-dynamic"):
        assert "weight-only scheme" in rd.quant.lora_refusal(dynamic)

    marked = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
    object.__setattr__(marked, "_radial_quant_scheme", "int4-weight")  # what quantize(m, "int4-weight") records
    with pytest.raises(ValueError, match=f"PEFT cannot wrap.*{allowed}"):
        check_lora_trainable(marked)

    class Int4TilePackedTo4dTensor(torch.Tensor):  # stands in for torchao's CUDA-only tensor of that name
        pass

    Int4TilePackedTo4dTensor.__module__ = "torchao.quantization.quantize_.workflows.int4"
    packed = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int4-weight-cpu",
                         group_size=GROUP)
    object.__delattr__(packed, "_radial_quant_scheme")  # e.g. loaded with from_pretrained: only the tensors tell
    check_lora_trainable(packed)  # int4-weight-cpu (IntxUnpackedToInt8Tensor) allows LoRA
    lin = packed.blocks[1].attn1.to_k
    lin._parameters["weight"] = torch.randn(lin.out_features, lin.in_features).as_subclass(Int4TilePackedTo4dTensor)
    with pytest.raises(ValueError, match=f"Int4TilePackedTo4dTensor.*PEFT cannot wrap.*{allowed}"):
        check_lora_trainable(packed)


def test_training_config_refuses_cuda_int4(tmp_path):
    from lora_training import ConfigError, load_config

    base = dict(model="tiny-wan", data_dir=str(tmp_path), output_dir=str(tmp_path / "run"), num_frames=17, height=64,
                width=64, rank=4, mixed_precision="bf16", quant="int4-weight")
    with pytest.raises(ConfigError, match="PEFT cannot wrap.*int4-weight-cpu"):
        load_config(base)


@pytest.mark.parametrize("scheme", ["int8-weight", "int4-weight-cpu"])
def test_quantize_after_adding_lora_keeps_adapters_in_full_precision(scheme):
    """quantize() on a model with PEFT adapters quantizes the base Linears only: the same model as the QLoRA order
    (quantize, then add the adapter), adapters untouched, exclusions naming a wrapped Linear still apply."""
    from peft import LoraConfig

    cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, use_rslora=False,
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out"])
    seed = torch.randint(0, 2**31, ()).item()

    qlora = rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, scheme, group_size=GROUP)
    torch.manual_seed(seed)
    qlora.add_adapter(cfg)

    late = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
    torch.manual_seed(seed)
    late.add_adapter(cfg)
    adapters = {n: p.detach().clone() for n, p in late.named_parameters() if "lora_" in n}
    assert adapters and all(p.dtype == torch.bfloat16 for p in adapters.values())
    rd.quantize(late, scheme, group_size=GROUP)
    after = dict(late.named_parameters())
    for n, p in adapters.items():
        assert not rd.quant.is_quantized(after[n]) and after[n].dtype == p.dtype and torch.equal(after[n], p), n
    assert _is_quantized(late.blocks[0].attn1.to_q.base_layer) and not _is_quantized(late.proj_out.base_layer)
    assert _quantized_names(late) == _quantized_names(qlora)  # no lora_A / lora_B among them
    inputs = _transformer_inputs("tiny-wan", seed=seed)
    with torch.no_grad():
        assert torch.equal(late(**inputs).sample, qlora(**inputs).sample)
    late.requires_grad_(False)
    for n, p in late.named_parameters():
        p.requires_grad_("lora_" in n)
    check_lora_trainable(late)
    late(**inputs).sample.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in late.named_parameters() if "lora_B" in n)

    custom = load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer
    custom.add_adapter(cfg)
    rd.quantize(custom, scheme, group_size=GROUP, exclude=[*rd.quant.DEFAULT_EXCLUDE, r"blocks\.0\.attn1\.to_q"])
    assert not _is_quantized(custom.blocks[0].attn1.to_q.base_layer)
    assert _is_quantized(custom.blocks[0].attn1.to_k.base_layer)


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


def test_cli_quantize_int4_skips_indivisible_linears_and_reports_errors_cleanly(tmp_path, capsys, monkeypatch):
    from diffusers import WanTransformer3DModel

    from radial_diffusers.cli import main

    # the default group size (128) divides no Linear input of tiny-wan: a clean error, not torchao's AssertionError
    assert main(["quantize", "tiny-wan", str(tmp_path / "a"), "--scheme", "int4-weight-cpu"]) == 2
    err = capsys.readouterr().err
    assert "divides none" in err.strip().splitlines()[-1] and "quant_primitives.py" not in err
    assert not (tmp_path / "a").exists()
    # group 16 divides only some: the others stay unquantized, as in quantize()
    assert main(["quantize", "tiny-wan", str(tmp_path / "b"), "--scheme", "int4-weight-cpu", "--group-size", "16"]) == 0
    want = _quantized_names(rd.quantize(load_tiny("tiny-wan", 0, dtype=torch.bfloat16).transformer, "int4-weight-cpu",
                                        group_size=16))
    assert want and _quantized_names(WanTransformer3DModel.from_pretrained(tmp_path / "b")) == want
    # any failure left inside the load is reported cleanly (here: a config that was not told the model's shapes)
    real = rd.quant.quantization_config
    monkeypatch.setattr(rd.quant, "quantization_config", lambda scheme, *, model=None, **kw: real(scheme, **kw))
    assert main(["quantize", "tiny-wan", str(tmp_path / "c"), "--scheme", "int4-weight-cpu", "--group-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(
        "radial-diffusers quantize: error: could not quantize tiny-wan with int4-weight-cpu: AssertionError")
    assert "quant_primitives.py" not in err  # no traceback of the failure itself
    assert not (tmp_path / "c").exists()


def test_training_on_quantized_base(tmp_path):
    """LoRA on an int8-weight base learns: every adapted layer moves off its zero init and the loss of a clip with
    structure (a drifting coarse pattern) goes down, at a fixed noise level so that the losses compare."""
    import imageio
    import numpy as np
    from safetensors.torch import load_file

    from lora_training import ConfigError, load_config
    from lora_training.train import train

    data = tmp_path / "clips"
    data.mkdir()
    pattern = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
    frames = [np.kron(np.roll(pattern, t // 3, axis=1), np.ones((8, 8, 1), np.uint8)) for t in range(20)]
    imageio.mimwrite(data / "a.mp4", frames, fps=16, macro_block_size=1)
    (data / "a.txt").write_text("a cat")
    base = dict(model="tiny-wan", data_dir=str(data), output_dir=str(tmp_path / "run"), num_frames=17, height=64,
                width=64, rank=4, block_size=16, mixed_precision="bf16", max_steps=16, quant="int8-weight",
                batch_size=1, learning_rate=1e-2, warmup_steps=1, lr_scheduler="constant_with_warmup",
                logit_std=1e-6, checkpoint_every=16)
    final = train(load_config(base), progress=False)
    losses = json.loads((tmp_path / "run" / "train_report.json").read_text())["losses"]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4]), losses
    weights = load_file(str(final / "pytorch_lora_weights.safetensors"))
    b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(b) == 16 and all(v.abs().max() > 0 for v in b)  # PEFT starts lora_B at exactly zero
    with pytest.raises(ConfigError, match="weight-only scheme"):
        load_config({**base, "quant": "int8-dynamic"})
    with pytest.raises(ConfigError, match="alternatives"):
        load_config({**base, "dfloat11": "somewhere"})


def test_quality_bench_runs():
    from scripts import REPO, run_script

    out = run_script(REPO / "bench" / "quant.py", "--skip-layers")
    assert "int4-weight-cpu" in out and "tiny-hunyuan" in out
    out = run_script(REPO / "bench" / "quant.py", "--cpu-dry-run")  # the --gpu code path, one block on CPU
    assert "radial + int8-weight" in out and "bf16 dense" in out
    assert "Wan2.1-1.3B size" in out and "Wan2.1-14B layer shapes" in out
    assert out.split("Wan2.1-14B layer shapes")[1].count("radial + ") == 4  # every CPU scheme at 14B shapes
