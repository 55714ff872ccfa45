"""DF11 on whole models: compress -> load -> outputs identical to BF16, official checkpoints, LoRA, hooks, errors."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import radial_diffusers as rd
from radial_diffusers.dfloat11 import compress, decompress, default_pattern, empty_model, is_dfloat11, load_dfloat11
from radial_diffusers.tiny import default_call_kwargs, load_tiny

from official_df11_loader_port import official_load
from scripts import run_script

OFFICIAL = Path(__file__).parent / "fixtures" / "dfloat11" / "official_models"
GEOMETRY = {"tiny-wan": dict(num_frames=9, height=64, width=64), "tiny-hunyuan": dict(num_frames=9, height=32, width=32)}
QUIET = dict(progress=False)


def _bf16_pipe(name):
    pipe = load_tiny(name, seed=0)
    pipe.to(torch.bfloat16)
    return pipe


def _run(pipe, name, steps=2, seed=0):
    kwargs = dict(default_call_kwargs(name), **GEOMETRY[name], num_inference_steps=steps, output_type="latent")
    with torch.no_grad():
        return pipe(prompt="a cat dancing", generator=torch.Generator().manual_seed(seed), **kwargs).frames


def _state_bits(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _wan_inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, model.config.in_channels, 3, 8, 8, generator=g).bfloat16()
    text = torch.randn(1, 7, model.config.text_dim, generator=g).bfloat16()
    return x, torch.tensor([700.0]), text


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """tiny-wan / tiny-hunyuan transformers (BF16) and their DF11 directories (ours)."""
    out = {}
    for name in ("tiny-wan", "tiny-hunyuan"):
        model = _bf16_pipe(name).transformer
        path = tmp_path_factory.mktemp("df11") / name
        result = compress(model, path, **QUIET)
        out[name] = (model, path, result)
    return out


# ------------------------------------------------------------------------------------------------------------------
# layout and round trips
# ------------------------------------------------------------------------------------------------------------------


def test_directory_layout_and_config(compressed):
    model, path, result = compressed["tiny-wan"]
    names = sorted(p.name for p in path.iterdir())
    assert names == ["blocks_0.safetensors", "blocks_1.safetensors", "config.json",
                     "diffusion_pytorch_model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    df11 = cfg["dfloat11_config"]
    assert df11["version"] == "0.5.0" and df11["threads_per_block"] == [512] and df11["bytes_per_thread"] == 8
    assert df11["pattern_dict"] == default_pattern(model)
    assert cfg["_class_name"] == "WanTransformer3DModel" and cfg["num_layers"] == model.config.num_layers
    block = load_file(str(path / "blocks_1.safetensors"))
    for b in ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps", "split_positions"):
        assert f"blocks.1.{b}" in block
    assert block["blocks.1.split_positions"].dtype == torch.int64 and block["blocks.1.luts"].dtype == torch.uint8
    # biases, norms and the modulation table relocate into the block file; no compressed weight is stored plain
    assert "blocks.1.attn1.to_q.bias" in block and "blocks.1.scale_shift_table" in block
    assert not any(k.endswith(".weight") and ".attn1.to_q" in k for f in path.glob("*.safetensors")
                   for k in load_file(str(f)))
    assert result.units == 2 and 0.5 < result.ratio < 0.9
    n = sum(model.get_submodule(f"blocks.{i}.{a}").weight.numel() for i in range(2)
            for a in default_pattern(model)[r"blocks\.\d+"])
    assert result.original_bytes == 2 * n


@pytest.mark.df11_kernel
def test_forward_through_the_interpreted_kernel_identical_to_bf16(compressed):
    """The model-level path through the Triton kernel itself (the other model tests decode with the CPU codec):
    one forward of the DF11 transformer equals the BF16 one bit for bit."""
    model, path, _ = compressed["tiny-wan"]
    df11 = _bf16_pipe("tiny-wan").transformer
    load_dfloat11(df11, path, **QUIET)
    assert is_dfloat11(df11)
    inputs = _wan_inputs(model)
    with torch.no_grad():
        assert torch.equal(df11(*inputs, return_dict=False)[0], model(*inputs, return_dict=False)[0])


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_pipeline_output_identical_to_bf16(compressed, name):
    _, path, _ = compressed[name]
    ref = _bf16_pipe(name)
    want = _run(ref, name)
    pipe = _bf16_pipe(name)
    load_dfloat11(pipe.transformer, path, **QUIET)
    assert is_dfloat11(pipe.transformer)
    assert torch.equal(_run(pipe, name), want)
    # decompress gives back the exact BF16 state
    decompress(pipe.transformer)
    assert not is_dfloat11(pipe.transformer)
    assert _same_state(_state_bits(pipe.transformer), _state_bits(ref.transformer))


def test_float32_modules_of_a_bf16_model_stay_bit_exact(tmp_path):
    """Kandinsky 5 loaded in BF16 keeps its modulation and time embedding float32 (_keep_in_fp32_modules): DF11
    compresses the BF16 Linears only, and the DF11 pipeline's output is bit-identical to the BF16 one (the float32
    tensors read back from the checkpoint into aligned storage: unaligned, a CPU float32 Linear differed in the last
    bit, which the model's bfloat16 roundings then grew)."""
    name = "tiny-kandinsky5"
    ref = load_tiny(name, seed=0, dtype=torch.bfloat16)
    assert ref.transformer.visual_transformer_blocks[0].visual_modulation.out_layer.weight.dtype == torch.float32
    compress(ref.transformer, tmp_path / "df11", **QUIET)
    kwargs = dict(default_call_kwargs(name), num_frames=17, height=128, width=128, num_inference_steps=2,
                  output_type="latent")

    def run(pipe):
        with torch.no_grad():
            return pipe(prompt="a cat", generator=torch.Generator().manual_seed(0), **kwargs).frames

    want = run(ref)
    pipe = load_tiny(name, seed=0, dtype=torch.bfloat16)
    load_dfloat11(pipe.transformer, tmp_path / "df11", **QUIET)
    assert pipe.transformer.visual_transformer_blocks[0].visual_modulation.out_layer.weight.dtype == torch.float32
    assert all(p.data_ptr() % 64 == 0 for p in pipe.transformer.parameters())
    assert torch.equal(run(pipe), want)


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_load_from_checkpoint_alone_builds_model(compressed, name):
    """model=None: our checkpoints carry the Diffusers config; the model is built on meta and filled from disk."""
    model, path, _ = compressed[name]
    m = load_dfloat11(None, path, **QUIET)
    assert type(m) is type(model) and all(p.device.type == "cpu" for p in m.parameters())
    decompress(m)
    want = _state_bits(model)
    got = _state_bits(m)
    assert _same_state({k: got[k] for k in want}, want)


def test_wan_i2v_pattern_includes_added_kv(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=8,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
                                  image_dim=4, added_kv_proj_dim=24, rope_max_seq_len=32).to(torch.bfloat16)
    attrs = default_pattern(model)[r"blocks\.\d+"]
    assert "attn2.add_k_proj" in attrs and "attn2.add_v_proj" in attrs
    compress(model, tmp_path / "i2v", **QUIET)
    m = load_dfloat11(copy.deepcopy(model), tmp_path / "i2v", **QUIET)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 2, 4, 4, generator=g).bfloat16()
    text = torch.randn(1, 5, 16, generator=g).bfloat16()
    img = torch.randn(1, 3, 4, generator=g).bfloat16()
    t = torch.tensor([300.0])
    with torch.no_grad():
        assert torch.equal(m(x, t, text, encoder_hidden_states_image=img).sample,
                           model(x, t, text, encoder_hidden_states_image=img).sample)


def test_streamed_from_saved_shards_equals_in_memory(compressed, tmp_path):
    """A saved model (several shards; a pipeline folder) is streamed block by block; same tensors as in memory."""
    model, path, _ = compressed["tiny-wan"]
    pipe_dir = tmp_path / "pipe"
    model.save_pretrained(pipe_dir / "transformer", max_shard_size="20KB")
    (pipe_dir / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert len(list((pipe_dir / "transformer").glob("*.safetensors"))) > 1
    out = compress(str(pipe_dir), tmp_path / "streamed", workers=2, **QUIET)
    for f in path.glob("*.safetensors"):
        a, b = load_file(str(f)), load_file(str(out.path / f.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name
    a = json.loads((path / "config.json").read_text())
    b = json.loads((out.path / "config.json").read_text())
    assert a["dfloat11_config"] == b["dfloat11_config"] and a["_class_name"] == b["_class_name"]


def test_cast_to_bf16_is_lossless_relative_to_the_cast(tmp_path):
    model = load_tiny("tiny-wan", seed=0).transformer  # float32
    with pytest.raises(ValueError, match="cast_to_bf16=True"):
        compress(model, tmp_path / "no", **QUIET)
    assert not (tmp_path / "no").exists() and not list(tmp_path.iterdir())  # nothing half-written
    compress(model, tmp_path / "yes", cast_to_bf16=True, **QUIET)
    m = decompress(load_dfloat11(None, tmp_path / "yes", **QUIET))
    for name, p in model.named_parameters():
        got = m.get_parameter(name)
        if name in ("blocks.0.scale_shift_table", "blocks.0.norm2.weight"):  # _keep_in_fp32_modules stay fp32
            assert got.dtype == torch.float32 and torch.equal(got, p)
        elif name.endswith("attn1.to_q.weight"):
            assert got.dtype == torch.bfloat16 and torch.equal(got, p.to(torch.bfloat16))


# ------------------------------------------------------------------------------------------------------------------
# official compatibility
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_official_checkpoint_loads_bit_exactly(name):
    """Directories written by the official dfloat11==0.5.0 compress_model (fixtures/dfloat11/README.md)."""
    root = OFFICIAL / name
    source = load_file(str(root / "source.safetensors"))
    config = json.loads((root / "source_config.json").read_text())
    ref = empty_model(config)
    ref.load_state_dict(source, assign=True)
    m = load_dfloat11(empty_model(config), root / "df11", **QUIET)
    if name == "tiny-wan":
        inputs = _wan_inputs(ref)
        with torch.no_grad():
            assert torch.equal(m(*inputs).sample, ref(*inputs).sample)
    decompress(m)
    assert _same_state(_state_bits(m), {k: v for k, v in source.items()})


def test_official_single_file_with_pattern(tmp_path):
    root = OFFICIAL / "tiny-wan"
    merged = {}
    for f in sorted((root / "df11").glob("*.safetensors")):
        merged.update(load_file(str(f)))
    save_file(merged, str(tmp_path / "model.safetensors"))
    pattern = json.loads((root / "df11" / "config.json").read_text())["dfloat11_config"]["pattern_dict"]
    config = json.loads((root / "source_config.json").read_text())
    with pytest.raises(ValueError, match="pattern"):
        load_dfloat11(empty_model(config), tmp_path / "model.safetensors", **QUIET)
    m = load_dfloat11(empty_model(config), tmp_path / "model.safetensors", pattern=pattern, **QUIET)
    assert _same_state(_state_bits(decompress(m)), load_file(str(root / "source.safetensors")))


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan"])
def test_our_checkpoint_follows_official_loading_rules(compressed, name):
    model, path, _ = compressed[name]
    ported = official_load(copy.deepcopy(model), str(path))
    if name == "tiny-wan":
        inputs = _wan_inputs(model, seed=3)
        with torch.no_grad():
            assert torch.equal(ported(*inputs).sample, model(*inputs).sample)
    else:
        pipe = _bf16_pipe(name)
        want = _run(pipe, name)
        pipe.transformer = official_load(pipe.transformer, str(path))
        assert torch.equal(_run(pipe, name), want)


# ------------------------------------------------------------------------------------------------------------------
# composition: LoRA, radial attention, group offloading, compile, CPU-resident weights
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_forward_and_gradients_equal_bf16(compressed, checkpointing):
    from peft import LoraConfig

    model, path, _ = compressed["tiny-wan"]
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"])
    results = []
    for df11 in (False, True):
        m = copy.deepcopy(model)
        if df11:
            load_dfloat11(m, path, **QUIET)
        torch.manual_seed(5)
        m.add_adapter(cfg)
        if checkpointing:
            m.enable_gradient_checkpointing()
        m.train()
        out = m(*_wan_inputs(m, seed=2)).sample
        out.float().square().mean().backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1, o2)
    assert len(g1) == 2 * 10 * 2 and g1.keys() == g2.keys()  # blocks x LoRA-wrapped Linears x (A, B)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert all(g.abs().sum() > 0 for g in g2.values())


def test_pipe_load_lora_weights_and_radial_attention(compressed, tmp_path):
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    _, path, _ = compressed["tiny-wan"]
    donor = _bf16_pipe("tiny-wan")
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_v", "ffn.net.2"])
    donor.transformer.add_adapter(cfg)
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(donor.transformer),
                                  transformer_lora_adapter_metadata=cfg.to_dict())
    radial = rd.RadialConfig(dense_steps=1, dense_layers=0, block_size=16)
    outs = []
    for df11 in (False, True):
        pipe = _bf16_pipe("tiny-wan")
        if df11:
            load_dfloat11(pipe.transformer, path, **QUIET)
        pipe.load_lora_weights(tmp_path, adapter_name="x")
        state = rd.apply_radial_attention(pipe, radial)
        outs.append(_run(pipe, "tiny-wan", steps=3))
        assert sum(state.sparse_calls.values()) > 0
    assert torch.equal(*outs)


def test_group_offload_and_cpu_offload(compressed):
    _, path, _ = compressed["tiny-hunyuan"]
    want = _run(_bf16_pipe("tiny-hunyuan"), "tiny-hunyuan")
    pipe = _bf16_pipe("tiny-hunyuan")
    load_dfloat11(pipe.transformer, path, **QUIET)
    pipe.transformer.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)
    assert torch.equal(_run(pipe, "tiny-hunyuan"), want)
    with pytest.raises(ValueError, match="load_dfloat11 first"):  # the wrong order is refused, not silently slow
        load_dfloat11(decompress(pipe.transformer), path, **QUIET)
    pipe = _bf16_pipe("tiny-hunyuan")
    load_dfloat11(pipe.transformer, path, device="cpu", cpu_offload=True, **QUIET)
    assert not any(k.endswith("encoded_exponent") for k in pipe.transformer.state_dict())
    assert torch.equal(_run(pipe, "tiny-hunyuan"), want)


def test_regional_compile_one_graph_per_block(compressed):
    from torch._dynamo.testing import CompileCounter

    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    inputs = _wan_inputs(model, seed=4)
    with torch.no_grad():
        eager = m(*inputs).sample
        torch._dynamo.reset()
        counter = CompileCounter()
        m.compile_repeated_blocks(backend=counter, fullgraph=True)
        compiled = m(*inputs).sample
        compiled2 = m(*inputs).sample
    torch._dynamo.reset()
    # fullgraph: the decode op and the weight hand-off stay inside the block's graph. Blocks differ only in their
    # stream lengths: the first graph is specialised, the second (automatic dynamic shapes) serves all other blocks.
    assert counter.frame_count <= 2
    assert torch.equal(compiled, eager) and torch.equal(compiled2, eager)


def test_placeholders_follow_the_model_and_never_materialise(compressed):
    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    w = m.blocks[0].attn1.to_q.weight
    assert w.shape == (24, 24) and w.stride() == (0, 0) and w.dtype == torch.bfloat16
    assert isinstance(m.blocks[0].attn1.to_q, torch.nn.Linear)
    assert "blocks.0.attn1.to_q.weight" not in m.state_dict()
    m.to("meta")  # .to() moves the compressed buffers; the placeholder follows them, never allocated full size
    assert m.blocks[0].attn1.to_q.weight.device.type == "meta"


# ------------------------------------------------------------------------------------------------------------------
# errors leave the model as it was
# ------------------------------------------------------------------------------------------------------------------


def _expect_unchanged(model, fn, match):
    before = _state_bits(model)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        fn()
    assert not is_dfloat11(model) and _same_state(_state_bits(model), before)


def test_bad_checkpoints_leave_model_unchanged(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    m = copy.deepcopy(model)

    trunc = tmp_path / "trunc"
    shutil.copytree(path, trunc)
    data = (trunc / "blocks_1.safetensors").read_bytes()
    (trunc / "blocks_1.safetensors").write_bytes(data[: len(data) - 100])
    _expect_unchanged(m, lambda: load_dfloat11(m, trunc, **QUIET), "truncated or corrupted")

    flipped = tmp_path / "flipped"
    shutil.copytree(path, flipped)
    raw = bytearray((flipped / "blocks_0.safetensors").read_bytes())
    raw[-40] ^= 0x10  # a bit inside the tensor data
    (flipped / "blocks_0.safetensors").write_bytes(bytes(raw))
    _expect_unchanged(m, lambda: load_dfloat11(m, flipped, **QUIET), "CRC-32")

    version = tmp_path / "version"
    shutil.copytree(path, version)
    cfg = json.loads((version / "config.json").read_text())
    cfg["dfloat11_config"]["version"] = "0.1.0"
    (version / "config.json").write_text(json.dumps(cfg))
    _expect_unchanged(m, lambda: load_dfloat11(m, version, **QUIET), "unsupported DFloat11 version")

    other = _bf16_pipe("tiny-hunyuan").transformer
    _expect_unchanged(other, lambda: load_dfloat11(other, path, **QUIET), "does not match")

    hunyuan_path = compressed["tiny-hunyuan"][1]
    _expect_unchanged(m, lambda: load_dfloat11(m, hunyuan_path, **QUIET), "does not match")
    _expect_unchanged(m, lambda: load_dfloat11(m, tmp_path / "nope", **QUIET), "no such file")
    with pytest.raises(ValueError, match="no model config"):
        load_dfloat11(None, OFFICIAL / "tiny-wan" / "df11", **QUIET)


def _official_with(tmp_path, key, index, mask):
    """A copy of the official tiny-wan DF11 directory with one bit of tensor ``key`` (of blocks_0) flipped."""
    dst = tmp_path / f"{key}-{index}"
    shutil.copytree(OFFICIAL / "tiny-wan" / "df11", dst)
    tensors = load_file(str(dst / "blocks_0.safetensors"))
    tensors[key].view(-1)[index] ^= mask
    save_file(tensors, str(dst / "blocks_0.safetensors"))
    return dst


def test_verify_decode_checks_official_checkpoints_without_crcs(tmp_path):
    """Official files carry no CRC-32s: a flipped gap bit loads wrong weights with verify=True; verify="decode"
    refuses it (model unchanged). A flipped sign/mantissa bit passes even that: exactly one weight differs."""
    root = OFFICIAL / "tiny-wan"
    config = json.loads((root / "source_config.json").read_text())
    source = load_file(str(root / "source.safetensors"))
    model = empty_model(config)
    model.load_state_dict(source, assign=True)

    good = decompress(load_dfloat11(empty_model(config), root / "df11", verify="decode", **QUIET))
    assert _same_state(_state_bits(good), source)
    gap = _official_with(tmp_path, "blocks.0.gaps", 3, 0x04)
    assert not _same_state(_state_bits(decompress(load_dfloat11(empty_model(config), gap, **QUIET))), source)
    _expect_unchanged(model, lambda: load_dfloat11(model, gap, verify="decode", **QUIET),
                      "corrupted DF11 unit blocks.0: thread .* gaps")

    sm = _official_with(tmp_path, "blocks.0.sign_mantissa", 100, 0x01)
    got = _state_bits(decompress(load_dfloat11(empty_model(config), sm, verify="decode", **QUIET)))
    assert sum(int((got[k].view(torch.int16) != v.view(torch.int16)).sum()) for k, v in source.items()) == 1
    with pytest.raises(ValueError, match="verify must be"):
        load_dfloat11(model, root / "df11", verify="yes", **QUIET)


def test_guards_and_misuse(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    with pytest.raises(RuntimeError, match="decompress"):
        m.save_pretrained(tmp_path / "x")
    with pytest.raises(RuntimeError, match="fuse"):
        m.fuse_lora()
    with pytest.raises(ValueError, match="already holds DF11"):
        load_dfloat11(m, path, **QUIET)
    with pytest.raises(ValueError, match="already holds DF11"):
        compress(m, tmp_path / "y", **QUIET)
    with pytest.raises(FileExistsError):
        compress(model, path, **QUIET)
    with pytest.raises(ValueError, match="holds no DF11"):
        decompress(copy.deepcopy(model))
    with pytest.raises(ValueError, match="no default DF11 pattern"):
        compress(torch.nn.Linear(4, 4).bfloat16(), tmp_path / "z", **QUIET)
    decompress(m)
    m.save_pretrained(tmp_path / "x")  # plain again
    assert (tmp_path / "x" / "diffusion_pytorch_model.safetensors").exists()


def test_overwrite_replaces_an_earlier_output_only(compressed, tmp_path, monkeypatch):
    """overwrite=True replaces an earlier DF11 output (or an empty folder); a folder of other files, the current
    folder and a folder above it are refused with nothing deleted (as the CLI's --overwrite)."""
    from radial_diffusers.errors import ConfigError

    model, path, _ = compressed["tiny-wan"]
    target = tmp_path / "out"
    compress(model, target, **QUIET)
    (target / "stale.txt").write_text("old")
    compress(model, target, overwrite=True, **QUIET)
    assert not (target / "stale.txt").exists() and (target / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="mine holds other files .*which overwrite=True would delete"):
        compress(model, mine, overwrite=True, **QUIET)
    assert (mine / "thesis.tex").read_text() == "years of work"
    saved = tmp_path / "saved-model"  # a config.json of its own is not a DF11 checkpoint's
    model.save_pretrained(saved)
    with pytest.raises(ConfigError, match="saved-model holds other files .*its config.json has no dfloat11_config"):
        compress(model, saved, overwrite=True, **QUIET)
    assert (saved / "diffusion_pytorch_model.safetensors").is_file()
    monkeypatch.chdir(mine)
    for here in (".", mine, tmp_path):
        with pytest.raises(ConfigError, match="is the current folder or contains it"):
            compress(model, here, overwrite=True, **QUIET)
    assert (mine / "thesis.tex").exists() and Path.cwd() == mine
    (tmp_path / "empty").mkdir()
    compress(model, tmp_path / "empty" / ".." / "empty", overwrite=True, **QUIET)  # an empty folder: fine
    assert (tmp_path / "empty" / "config.json").exists()
    # without overwrite too, as a new folder (tempfile.TemporaryDirectory, as Diffusers' save_pretrained takes it)
    with tempfile.TemporaryDirectory(dir=tmp_path) as fresh:
        compress(model, fresh, **QUIET)
        assert (Path(fresh) / "config.json").exists()


# ------------------------------------------------------------------------------------------------------------------
# the benchmark script runs (CPU paths; the GPU path as a toy-size dry run)
# ------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _bench(*args):
    return run_script(REPO / "bench" / "dfloat11.py", *args)


def test_bench_real_weights_report(tmp_path):
    g = torch.Generator().manual_seed(0)
    weights = {f"encoder.layer.{i}.attention.query.weight": torch.randn(64, 64, generator=g) * 0.05 for i in range(2)}
    weights.update({"encoder.layer.0.output.dense.weight": torch.randn(64, 128, generator=g) * 0.05,
                    "encoder.layer.0.output.dense.bias": torch.randn(64, generator=g),
                    "embeddings.word_embeddings.weight": torch.randn(300, 64, generator=g)})
    save_file(weights, str(tmp_path / "w.safetensors"))
    out = _bench("--weights", str(tmp_path / "w.safetensors"), "--no-official")
    assert "encoder.layer.0" in out and "embeddings.word_embeddings.weight" in out
    assert "TOTAL" in out and "ours CPU decode" in out


@pytest.mark.df11_kernel  # the GPU path's kernel, interpreted
def test_bench_gpu_path_dry_run():
    out = _bench("--cpu-dry-run")
    assert "[bit-exact]" in out and "[identical output]" in out


def test_load_builds_model_from_original_pipeline_config(compressed, tmp_path):
    """model = path/Hub id of the original pipeline: only transformer/config.json is read (no weights exist here)."""
    model, path, _ = compressed["tiny-hunyuan"]
    pipe_dir = tmp_path / "original"
    (pipe_dir / "transformer").mkdir(parents=True)
    (pipe_dir / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))
    (pipe_dir / "transformer" / "config.json").write_text(model.to_json_string())
    m = load_dfloat11(str(pipe_dir), path, **QUIET)
    assert _same_state({k: v for k, v in _state_bits(decompress(m)).items()}, _state_bits(model))


def test_units_that_are_single_linears(compressed, tmp_path):
    """pattern [] = the matched module is itself the Linear (the official format allows it; LLM releases use it)."""
    from peft import LoraConfig

    model, _, _ = compressed["tiny-wan"]
    pattern = {r"blocks\.\d+\.attn1\.to_q": [], r"blocks\.\d+\.ffn": ["net.0.proj", "net.2"]}
    compress(model, tmp_path / "mixed", pattern=pattern, **QUIET)
    names = sorted(p.name for p in (tmp_path / "mixed").glob("blocks_*"))
    assert names == ["blocks_0_attn1_to_q.safetensors", "blocks_0_ffn.safetensors", "blocks_1_attn1_to_q.safetensors",
                     "blocks_1_ffn.safetensors"]
    assert json.loads((tmp_path / "mixed" / "config.json").read_text())["dfloat11_config"]["pattern_dict"] == pattern
    m = load_dfloat11(copy.deepcopy(model), tmp_path / "mixed", **QUIET)
    assert m.blocks[0].attn1.to_q.weight.stride() == (0, 0) and m.blocks[0].attn1.to_k.weight.stride() != (0, 0)
    ported = official_load(copy.deepcopy(model), str(tmp_path / "mixed"))
    inputs = _wan_inputs(model, seed=6)
    with torch.no_grad():
        want = model(*inputs).sample
        assert torch.equal(m(*inputs).sample, want) and torch.equal(ported(*inputs).sample, want)
    ref = copy.deepcopy(model)
    cfg = LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["to_q"])
    torch.manual_seed(0)
    ref.add_adapter(cfg)
    torch.manual_seed(0)
    m.add_adapter(cfg)  # PEFT wraps a Linear that is itself a DF11 unit
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, ref(*inputs).sample)


def _text_encoder_fixture():
    """The official LLM-layout fixture: the tiny HunyuanVideo text encoder (Llama), embed_tokens a unit of its own."""
    from transformers import LlamaConfig, LlamaModel

    root = OFFICIAL / "tiny-hunyuan-text-encoder"
    config = LlamaConfig.from_dict(json.loads((root / "source_config.json").read_text()))
    source = load_file(str(root / "source.safetensors"))

    def build():
        model = LlamaModel(config).to(torch.bfloat16).eval()
        model.load_state_dict(source)
        return model

    return root, build, source


def test_official_llm_layout_with_embedding_unit_loads_bit_exactly():
    """Official compress_model output with ``embed_tokens: []`` (an nn.Embedding unit, as in the DF11 LLM releases)."""
    root, build, source = _text_encoder_fixture()
    ref = build()
    m = load_dfloat11(build(), root / "df11", **QUIET)
    assert m.embed_tokens.weight.stride() == (0, 0) and m.layers[0].mlp.up_proj.weight.stride() == (0, 0)
    ids = torch.randint(0, ref.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.equal(m(ids).last_hidden_state, ref(ids).last_hidden_state)
    assert _same_state(_state_bits(decompress(m)), source)


def test_our_embedding_unit_follows_official_loading_rules(tmp_path):
    """Our compress() on an Embedding unit: loads with our loader and with the official rules, outputs identical."""
    root, build, _ = _text_encoder_fixture()
    pattern = json.loads((root / "df11" / "config.json").read_text())["dfloat11_config"]["pattern_dict"]
    ref = build()
    compress(ref, tmp_path / "te", pattern=pattern, **QUIET)
    assert (tmp_path / "te" / "embed_tokens.safetensors").is_file()
    ids = torch.randint(0, ref.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        want = ref(ids).last_hidden_state
        assert torch.equal(load_dfloat11(build(), tmp_path / "te", **QUIET)(ids).last_hidden_state, want)
        assert torch.equal(official_load(build(), str(tmp_path / "te"))(ids).last_hidden_state, want)
    with pytest.raises(ValueError, match="RMSNorm.*nn.Linear"):
        compress(ref, tmp_path / "bad", pattern={r"norm": []}, **QUIET)


# ------------------------------------------------------------------------------------------------------------------
# audit fixes: pattern override, overlapping units, dtype, deepcopy, DoRA / merge, 0.2.0 configs, Hub ids
# ------------------------------------------------------------------------------------------------------------------


def _random_inputs(model):
    return _wan_inputs(model, seed=torch.randint(0, 2**31, ()).item())


def test_pattern_argument_cannot_replace_the_checkpoints_own(compressed):
    model, path, _ = compressed["tiny-wan"]
    own = default_pattern(model)
    m = copy.deepcopy(model)
    reordered = {r"blocks\.\d+": list(reversed(own[r"blocks\.\d+"]))}
    _expect_unchanged(m, lambda: load_dfloat11(m, path, pattern=reordered, **QUIET), "carries its own pattern_dict")
    _expect_unchanged(m, lambda: load_dfloat11(m, path, pattern={r"blocks\.0": own[r"blocks\.\d+"]}, **QUIET),
                      "pattern= is only for official single files")
    load_dfloat11(m, path, pattern=own, **QUIET)  # the checkpoint's own pattern is accepted
    inputs = _random_inputs(model)
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, model(*inputs).sample)


def test_linear_claimed_by_two_units_is_refused(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    whole, single = {r"blocks\.\d+": ["attn1.to_q", "attn1.to_k"]}, {r"blocks\.\d+\.attn1\.to_q": []}
    # compress: overlapping regexes, and one nn.Linear object shared by two blocks
    with pytest.raises(ValueError, match="blocks.0.attn1.to_q belongs to two DF11 units, 'blocks.0' and "
                                         "'blocks.0.attn1.to_q'"):
        compress(model, tmp_path / "overlap", pattern={**whole, **single}, **QUIET)
    tied = copy.deepcopy(model)
    tied.blocks[1].attn1.to_q = tied.blocks[0].attn1.to_q
    with pytest.raises(ValueError, match="blocks.1.attn1.to_q and blocks.0.attn1.to_q are one and the same Linear"):
        compress(tied, tmp_path / "tied", **QUIET)
    assert not list(tmp_path.iterdir())  # nothing written
    # load: a checkpoint whose units overlap (assembled from two valid ones), and a model with a shared Linear
    compress(model, tmp_path / "a", pattern=whole, **QUIET)
    compress(model, tmp_path / "b", pattern=single, **QUIET)
    merged = tmp_path / "merged"
    shutil.copytree(tmp_path / "a", merged)
    for f in (tmp_path / "b").glob("blocks_*_attn1_to_q.safetensors"):
        shutil.copy(f, merged / f.name)
    cfg = json.loads((merged / "config.json").read_text())
    cfg["dfloat11_config"]["pattern_dict"] = {**whole, **single}
    (merged / "config.json").write_text(json.dumps(cfg))
    m = copy.deepcopy(model)
    _expect_unchanged(m, lambda: load_dfloat11(m, merged, **QUIET), "belongs to two DF11 units")
    tied = copy.deepcopy(model)
    tied.blocks[1].attn1.to_q = tied.blocks[0].attn1.to_q
    _expect_unchanged(tied, lambda: load_dfloat11(tied, path, **QUIET), "are one and the same Linear")


def test_model_moved_to_another_dtype_decodes_in_that_dtype(compressed):
    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    x, t, text = _random_inputs(model)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m.to(dtype)
        ref = copy.deepcopy(model).to(dtype)
        w = m.blocks[1].ffn.net[2].weight
        assert w.dtype == dtype and w.stride() == (0, 0)  # the placeholder follows, still never materialised
        with torch.no_grad():
            assert torch.equal(m(x.to(dtype), t, text.to(dtype)).sample, ref(x.to(dtype), t, text.to(dtype)).sample)
    m.float()
    decompress(m)  # decompress gives the weights in the model's current dtype
    want = copy.deepcopy(model).float().state_dict()
    got = m.state_dict()
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want)


def test_deepcopy_gives_an_independent_working_model(compressed):
    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    inputs = _random_inputs(model)
    with torch.no_grad():
        want = model(*inputs).sample
        c = copy.deepcopy(m)
        assert is_dfloat11(c) and torch.equal(c(*inputs).sample, want)
        assert c.blocks[0].encoded_exponent is not m.blocks[0].encoded_exponent
        c.blocks[0].attn1.to_q.bias += 1  # only the copy changes
        changed = copy.deepcopy(model)
        changed.blocks[0].attn1.to_q.bias += 1
        assert torch.equal(c(*inputs).sample, changed(*inputs).sample)
        assert not torch.equal(c(*inputs).sample, want)
        assert torch.equal(m(*inputs).sample, want)
    with pytest.raises(RuntimeError, match="decompress"):  # the copy keeps its guards, bound to itself
        c.save_pretrained("unused")
    decompress(c)
    assert is_dfloat11(m) and not is_dfloat11(c)
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, want)
    m.enable_group_offload(torch.device("cpu"), offload_device=torch.device("cpu"), offload_type="block_level",
                           num_blocks_per_group=1)
    with pytest.raises(RuntimeError, match="deep-copy the model before enabling them"):
        copy.deepcopy(m)


@pytest.mark.parametrize("units", ["blocks", "single-linear units"])
def test_dora_on_a_dfloat11_base_matches_bf16(compressed, tmp_path, units):
    """DoRA reads the base weight at init (its magnitude) and, for a unit that is the Linear itself, after the base
    forward: the placeholder decodes on such reads, so outputs and gradients equal DoRA on the BF16 model."""
    from peft import LoraConfig

    model, path, _ = compressed["tiny-wan"]
    if units != "blocks":
        path = tmp_path / "single"
        compress(model, path, pattern={r"blocks\.\d+\.attn1\.to_q": [], r"blocks\.\d+\.ffn": ["net.0.proj", "net.2"]},
                 **QUIET)
    cfg = LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False,
                     target_modules=["attn1.to_q", "attn1.to_v", "ffn.net.2"])
    inputs = _random_inputs(model)
    seed = torch.randint(0, 2**31, ()).item()
    results = []
    for df11 in (False, True):
        m = copy.deepcopy(model)
        if df11:
            load_dfloat11(m, path, **QUIET)
        torch.manual_seed(seed)
        m.add_adapter(cfg)
        out = m(*inputs).sample
        out.float().square().mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None},
                        {n: p.detach().clone() for n, p in m.named_parameters() if "lora_magnitude" in n}))
    (o1, g1, mag1), (o2, g2, mag2) = results
    assert mag1.keys() == mag2.keys() and all(torch.equal(mag1[k], mag2[k]) for k in mag1)
    assert all(v.abs().min() > 0 for v in mag2.values())  # not computed from a zero placeholder
    assert torch.equal(o1, o2) and g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)


def test_merge_and_base_rewriting_inits_are_refused(compressed):
    from peft import LoraConfig, inject_adapter_in_model

    from radial_diffusers.dfloat11.hooks import DF11WeightError
    from radial_diffusers.dfloat11.loading import check_adapter_config

    model, path, _ = compressed["tiny-wan"]
    m = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    torch.manual_seed(0)
    m.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q"]))
    inputs = _random_inputs(model)
    with torch.no_grad():
        before = m(*inputs).sample
    layer = m.blocks[0].attn1.to_q
    for safe in (False, True):
        with pytest.raises(DF11WeightError, match=r"blocks\.0\.attn1\.to_q\.weight is DFloat11-compressed.*merge"):
            layer.merge(safe_merge=safe)
    assert not layer.merged
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, before)
    # reads outside the forward see the real weight; writes are refused
    w = m.blocks[1].attn2.to_k.weight
    assert torch.equal(w.float().norm(), model.blocks[1].attn2.to_k.weight.float().norm())
    assert torch.equal(w + 0, model.blocks[1].attn2.to_k.weight)
    with pytest.raises(DF11WeightError, match="cannot be modified"):
        torch.nn.init.zeros_(w)
    # inits that rewrite the base weight: refused before the model changes (add_adapter), or clearly (PEFT directly)
    fresh = load_dfloat11(copy.deepcopy(model), path, **QUIET)
    for init in ("pissa", "pissa_niter_4", "olora"):
        with pytest.raises(ValueError, match=f"init_lora_weights='{init}' rewrites the base weights"):
            fresh.add_adapter(LoraConfig(r=2, init_lora_weights=init, target_modules=["to_q"]))
    for init in ("corda", "loftq", "lora_ga"):  # their LoraConfigs need extra packages: the check alone
        with pytest.raises(ValueError, match="rewrites the base weights"):
            check_adapter_config(SimpleNamespace(init_lora_weights=init))
    check_adapter_config(SimpleNamespace(init_lora_weights="gaussian"))
    assert not any(callable(getattr(mod, "get_base_layer", None)) for mod in fresh.modules())
    with pytest.raises(DF11WeightError, match="cannot be modified.*OLoRA"):
        inject_adapter_in_model(LoraConfig(r=2, init_lora_weights="olora", target_modules=["to_q"]), fresh)


def _official_style_v020(model, src: Path, dst: Path, pattern: dict, tpb: int) -> None:
    """A 0.2.0-style checkpoint the way the official writer lays it out (threads_per_block as a list, unpadded gaps,
    no CRC metadata), with ``pattern``'s attribute order and ``tpb`` threads per block, encoded by our codec."""
    from radial_diffusers.dfloat11 import encode
    from radial_diffusers.dfloat11.patterns import find_units

    dst.mkdir()
    units = {u.file_name: u for u in find_units(model, pattern)}
    for f in src.glob("*.safetensors"):
        tensors = {k: v for k, v in load_file(str(f)).items() if not k.rsplit(".", 1)[-1] in (
            "luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps", "split_positions")}
        if f.name in units:
            u = units[f.name]
            packed = encode([model.get_submodule(k[: -len(".weight")]).weight for k in u.weight_keys()],
                            threads_per_block=tpb)
            bufs = packed.buffers()
            n_blocks = -(-bufs["encoded_exponent"].numel() // (8 * tpb))
            bufs["gaps"] = bufs["gaps"][: 5 * tpb * n_blocks // 8].clone()  # the official writer does not pad
            tensors.update({f"{u.name}.{b}": t for b, t in bufs.items()})
        save_file(tensors, str(dst / f.name))
    cfg = json.loads((src / "config.json").read_text())
    cfg["dfloat11_config"] = {"version": "0.2.0", "threads_per_block": [tpb], "bytes_per_thread": 8,
                              "pattern_dict": pattern}
    (dst / "config.json").write_text(json.dumps(cfg))


def test_v020_config_256_threads_reordered_attributes_loads_bit_exactly(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    order = default_pattern(model)[r"blocks\.\d+"]
    shuffled = [order[i] for i in torch.randperm(len(order)).tolist()]
    if shuffled == order:
        shuffled = order[::-1]
    pattern = {r"blocks\.\d+": shuffled}
    _official_style_v020(model, path, tmp_path / "v020", pattern, 256)
    m = load_dfloat11(copy.deepcopy(model), tmp_path / "v020", **QUIET)
    assert m._dfloat11_config["threads_per_block"] == [256] and m._dfloat11_config["pattern_dict"] == pattern
    inputs = _random_inputs(model)
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, model(*inputs).sample)
    assert _same_state(_state_bits(decompress(m)), _state_bits(model))
    rebuilt = load_dfloat11(None, tmp_path / "v020", **QUIET)  # the model config next to it builds the model
    assert _same_state(_state_bits(decompress(rebuilt)), _state_bits(model))


def _fake_hub(monkeypatch, tmp_path, repos: dict):
    """huggingface_hub's download functions answered from local folders (no network): returns the fetched files."""
    import fnmatch

    import diffusers.configuration_utils
    import huggingface_hub

    fetched = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        if repo_id not in repos:
            raise OSError(f"404 Client Error: repository {repo_id} not found")
        out = tmp_path / "hub-cache" / repo_id.replace("/", "--")
        for f in sorted(repos[repo_id].rglob("*")):
            rel = f.relative_to(repos[repo_id]).as_posix()
            if f.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns)):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out / rel)
                fetched.append(f"{repo_id}:{rel}")
        return str(out)

    def hf_hub_download(repo_id, filename, subfolder=None, **kwargs):
        rel = f"{subfolder}/{filename}" if subfolder else filename
        if repo_id not in repos or not (repos[repo_id] / rel).is_file():
            raise OSError(f"404 Client Error: {repo_id}/{rel} not found")
        fetched.append(f"{repo_id}:{rel}")
        return str(repos[repo_id] / rel)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(diffusers.configuration_utils, "hf_hub_download", hf_hub_download)
    return fetched


def test_hub_ids_for_the_original_model_and_the_checkpoint(compressed, tmp_path, monkeypatch):
    from radial_diffusers.dfloat11.checkpoint import _hub_snapshot

    model, path, _ = compressed["tiny-wan"]
    pipe_dir = tmp_path / "pipe"
    _bf16_pipe("tiny-wan").save_pretrained(pipe_dir)
    fetched = _fake_hub(monkeypatch, tmp_path, {"org/wan-pipe": pipe_dir, "org/wan-df11": path})

    # compress from a Hub id: only the transformer is fetched, and the result equals compressing it in memory
    out = compress("org/wan-pipe", tmp_path / "from-hub", **QUIET)
    assert fetched and all(f.startswith("org/wan-pipe:transformer/") or f == "org/wan-pipe:model_index.json"
                           for f in fetched)
    for f in path.glob("*.safetensors"):
        a, b = load_file(str(f)), load_file(str(out.path / f.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name

    # empty_model / load_dfloat11 from the original's Hub id: its transformer config.json alone, no weights
    fetched.clear()
    empty = empty_model("org/wan-pipe")
    assert type(empty) is type(model) and all(p.device.type == "meta" for p in empty.parameters())
    m = load_dfloat11("org/wan-pipe", "org/wan-df11", **QUIET)
    assert not any(f.startswith("org/wan-pipe:") and f.endswith(".safetensors") for f in fetched)
    assert "org/wan-pipe:transformer/config.json" in fetched and "org/wan-df11:blocks_0.safetensors" in fetched
    local = load_dfloat11(str(pipe_dir), path, **QUIET)  # the same from local folders
    inputs = _random_inputs(model)
    with torch.no_grad():
        assert torch.equal(m(*inputs).sample, local(*inputs).sample)
    assert _same_state(_state_bits(decompress(m)), _state_bits(model))

    # unknown repos: clear errors, nothing changed
    assert _hub_snapshot("org/wan-df11").is_dir()
    other = copy.deepcopy(model)
    _expect_unchanged(other, lambda: load_dfloat11(other, "org/missing", **QUIET), "could not be fetched from the Hub")
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hub"):
        compress("org/missing", tmp_path / "x", **QUIET)
    with pytest.raises(OSError):
        empty_model("org/missing")


def test_official_flux_checkpoint_with_its_own_attribute_order_loads_bit_exactly():
    """A model outside our defaults (Flux), compressed by the official package with the official Flux release's
    attribute order (added k/v before q, MLP before attention): the loader follows the checkpoint's pattern_dict."""
    root = OFFICIAL / "tiny-flux"
    config = json.loads((root / "source_config.json").read_text())
    source = load_file(str(root / "source.safetensors"))
    ref = empty_model(config)
    ref.load_state_dict(source, assign=True)
    m = load_dfloat11(empty_model(config), root / "df11", **QUIET)
    g = torch.Generator().manual_seed(21)
    tokens, text = 16, 5
    kwargs = dict(hidden_states=torch.randn(1, tokens, config["in_channels"], generator=g).bfloat16(),
                  encoder_hidden_states=torch.randn(1, text, config["joint_attention_dim"], generator=g).bfloat16(),
                  pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g).bfloat16(),
                  timestep=torch.tensor([0.4]), img_ids=torch.randn(tokens, 3, generator=g),
                  txt_ids=torch.zeros(text, 3), return_dict=False)
    with torch.no_grad():
        assert torch.equal(m(**kwargs)[0], ref(**kwargs)[0])
    assert _same_state(_state_bits(decompress(m)), source)


# ------------------------------------------------------------------------------------------------------------------
# sources, outputs and checksums (audit)
# ------------------------------------------------------------------------------------------------------------------


def _decompressed_state(path):
    return {k: v.detach().clone() for k, v in decompress(load_dfloat11(None, path, **QUIET)).state_dict().items()}


@pytest.mark.parametrize("sharded", [False, True])
def test_weight_files_chosen_as_from_pretrained_does(tmp_path, sharded):
    from radial_diffusers.cli import main

    main_model = _bf16_pipe("tiny-wan").transformer
    other = load_tiny("tiny-wan", seed=int(torch.randint(1, 1000, (1,)))).transformer.to(torch.bfloat16)
    shard = dict(max_shard_size="20KB") if sharded else {}
    src, only_variant = tmp_path / "src", tmp_path / "only-variant"
    main_model.save_pretrained(src, **shard)
    for folder in (src, only_variant):  # a variant (any name) next to the main weights, and alone
        other.save_pretrained(folder, variant="fp16", **shard)
    assert (src / ("diffusion_pytorch_model.safetensors.index.json" if sharded else
                   "diffusion_pytorch_model.fp16.safetensors")).exists()

    assert _same_state(_decompressed_state(compress(src, tmp_path / "main", **QUIET).path), main_model.state_dict())
    assert _same_state(_decompressed_state(compress(src, tmp_path / "fp16", variant="fp16", **QUIET).path),
                       other.state_dict())
    with pytest.raises(FileNotFoundError, match=r"only variant weights \['fp16'\]: pass variant='fp16'"):
        compress(only_variant, tmp_path / "x", **QUIET)
    with pytest.raises(FileNotFoundError, match=r"no diffusion_pytorch_model\.bf16\.safetensors.*variants found"):
        compress(src, tmp_path / "x", variant="bf16", **QUIET)
    assert not (tmp_path / "x").exists()
    assert main(["compress", str(only_variant), str(tmp_path / "cli"), "--variant", "fp16"]) == 0
    assert _same_state(_decompressed_state(tmp_path / "cli"), other.state_dict())


def test_checkpoint_missing_a_unit_or_with_a_bad_regex_is_refused(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    m = copy.deepcopy(model)
    for lost in ("blocks_0", "blocks_1"):
        incomplete = tmp_path / f"without-{lost}"
        shutil.copytree(path, incomplete)
        (incomplete / f"{lost}.safetensors").unlink()
        _expect_unchanged(m, lambda: load_dfloat11(m, incomplete, **QUIET),
                          rf"lacks the DF11 units of 1 modules.*{lost.replace('_', '.')}")
    bad = tmp_path / "bad-regex"
    shutil.copytree(path, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["dfloat11_config"]["pattern_dict"]["blocks\\.(\\d+"] = ["attn1.to_q"]
    (bad / "config.json").write_text(json.dumps(cfg))
    _expect_unchanged(m, lambda: load_dfloat11(m, bad, **QUIET), r"config\.json: pattern_dict regex 'blocks\\\\\.\(")


def test_our_checkpoint_refuses_another_class_or_a_lost_non_block_file(compressed, tmp_path):
    """Our checkpoints record their class and hold every weight: a checkpoint of another class whose tensors would
    all fit (Wan into Wan VACE: its vace_blocks untouched), or one whose non-block file is lost (embedders, norms,
    proj_out would keep the model's own values), is refused and the model is left as it was."""
    model, path, _ = compressed["tiny-wan"]
    vace = _bf16_pipe("tiny-wan-vace").transformer
    _expect_unchanged(vace, lambda: load_dfloat11(vace, path, **QUIET),
                      r"does not match WanVACETransformer3DModel: it holds a WanTransformer3DModel \(its config\.json\)")
    lost = tmp_path / "no-rest"
    shutil.copytree(path, lost)
    (lost / "diffusion_pytorch_model.safetensors").unlink()
    m = copy.deepcopy(model)
    _expect_unchanged(m, lambda: load_dfloat11(m, lost, **QUIET),
                      r"model parameters are not in the checkpoint, e.g. .*patch_embedding.*missing or truncated file")
    load_dfloat11(m, path, **QUIET)  # the whole checkpoint loads
    sub = type("MyWan", (type(model),), {})  # a subclass of the checkpoint's class is that class
    mine = sub.from_config(model.config).to(torch.bfloat16)
    load_dfloat11(mine, path, **QUIET)


class _Collide(torch.nn.Module):
    """Modules ``x.y_z`` and ``x_y.z``: both units would be written to ``x_y_z.safetensors``."""

    def __init__(self):
        super().__init__()
        self.x = torch.nn.ModuleDict({"y_z": torch.nn.Linear(16, 16)})
        self.x_y = torch.nn.ModuleDict({"z": torch.nn.Linear(16, 16)})


def test_units_sharing_a_file_name_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"'x\.y_z' and 'x_y\.z' would both be written to x_y_z\.safetensors"):
        compress(_Collide().bfloat16(), tmp_path / "out", pattern={r"x\.y_z": [], r"x_y\.z": []}, **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_source_shard_is_one_clear_error(compressed, tmp_path, capsys):
    from radial_diffusers.cli import main

    model, _, _ = compressed["tiny-wan"]
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="20KB")
    shards = sorted(src.glob("*.safetensors"))
    victim = shards[int(torch.randint(len(shards), (1,)))]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{victim.name}: not a readable safetensors file"):
        compress(src, tmp_path / "out", **QUIET)
    assert main(["compress", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_output_that_is_or_contains_the_source_is_refused(compressed, tmp_path, capsys):
    from radial_diffusers.cli import main

    model, _, _ = compressed["tiny-wan"]
    pipe = tmp_path / "pipe"
    model.save_pretrained(pipe / "transformer")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    before = {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()}
    for source, out in ((pipe, pipe), (pipe, pipe / "transformer"), (pipe / "transformer", pipe / "transformer")):
        with pytest.raises(ValueError, match="source model folder"):
            compress(source, out, overwrite=True, **QUIET)
        assert main(["compress", str(source), str(out), "--overwrite"]) == 2
        assert "source model folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in pipe.rglob("*") if p.is_file()} == before


def _resync_corruption(path: Path, unit: str, seed: int):
    """(the tensors of ``unit``'s file with one byte of encoded_exponent changed, its metadata): a change that the
    structural trial decode accepts (Huffman codes resynchronise) but that changes the decoded weights."""
    from safetensors import safe_open

    from radial_diffusers.dfloat11.codec import DF11Unit, decode
    from radial_diffusers.dfloat11.loading import _verify_stream

    file = path / f"{unit.replace('.', '_')}.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(file))
    buffers = {b: tensors[f"{unit}.{b}"] for b in DF11Unit.BUFFER_NAMES}
    ref = torch.cat(decode(DF11Unit(**buffers)))  # no shapes: the flat pieces between split_positions
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        enc = buffers["encoded_exponent"].clone()
        enc[int(torch.randint(enc.numel(), (1,), generator=g))] ^= int(torch.randint(1, 256, (1,), generator=g))
        bad = DF11Unit(**{**buffers, "encoded_exponent": enc})
        try:
            _verify_stream(unit, bad)
        except ValueError:
            continue
        if not torch.equal(torch.cat(decode(bad)).view(torch.int16), ref.view(torch.int16)):
            return {**tensors, f"{unit}.encoded_exponent": enc}, meta
    raise AssertionError("no structurally valid corruption found")


@pytest.mark.parametrize("seed", [0, 1])
def test_verify_decode_compares_the_weights_checksum_of_our_checkpoints(compressed, tmp_path, seed):
    from radial_diffusers.dfloat11.checkpoint import CRC_KEY, UNIT_CRC_KEY, save_safetensors

    model, path, _ = compressed["tiny-wan"]
    unit = f"blocks.{seed % 2}"
    tensors, meta = _resync_corruption(path, unit, seed)
    assert json.loads(meta[UNIT_CRC_KEY]).keys() == {unit}
    for keep_checksum in (True, False):
        bad = tmp_path / f"bad-{keep_checksum}"
        shutil.copytree(path, bad)
        # rewritten with fresh tensor CRC-32s, as if the corruption happened before they were computed
        extra = {k: v for k, v in meta.items() if k not in (CRC_KEY, "format")}
        if not keep_checksum:
            extra.pop(UNIT_CRC_KEY)
        save_safetensors(bad / f"{unit.replace('.', '_')}.safetensors", tensors, extra)
        m = load_dfloat11(copy.deepcopy(model), bad, verify=True, **QUIET)  # the tensor CRC-32s match: wrong weights
        x = _wan_inputs(model, seed)
        with torch.no_grad():
            assert not torch.equal(m(*x).sample, model(*x).sample)
        m = copy.deepcopy(model)
        if keep_checksum:
            _expect_unchanged(m, lambda: load_dfloat11(m, bad, verify="decode", **QUIET),
                              rf"corrupted DF11 unit {unit}: its decoded weights fail the CRC-32")
        else:  # structure only: this corruption keeps every code boundary consistent
            load_dfloat11(m, bad, verify="decode", **QUIET)
    ported = official_load(copy.deepcopy(model), str(path))  # the official loader ignores the metadata
    with torch.no_grad():
        assert torch.equal(ported(*_wan_inputs(model)).sample, model(*_wan_inputs(model)).sample)


def test_plain_tensors_take_the_models_dtype_as_the_official_loader_copies(compressed):
    model, path, _ = compressed["tiny-wan"]
    fp32 = load_tiny("tiny-wan", seed=int(torch.randint(1, 1000, (1,)))).transformer  # float32, other weights
    ours = load_dfloat11(copy.deepcopy(fp32), path, **QUIET)
    official = official_load(copy.deepcopy(fp32), str(path))
    want = official.state_dict()
    got = ours.state_dict()
    plain = [k for k in fp32.state_dict() if k in got and k in want]  # the tensors both loaders copied
    assert plain and all(got[k].dtype == fp32.state_dict()[k].dtype == want[k].dtype for k in plain)
    assert all(torch.equal(got[k], want[k]) for k in plain)
    x, t, text = _wan_inputs(model, seed=5)
    ref = copy.deepcopy(fp32)  # the BF16 weights the checkpoint holds, in the model's float32
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(ours(x.float(), t, text.float()).sample, ref(x.float(), t, text.float()).sample)


class _OneLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(256, 128)


def test_official_port_rejects_what_the_official_kernel_cannot_run(compressed, tmp_path):
    model, path, _ = compressed["tiny-wan"]
    for key, value, match in (("bytes_per_thread", 4, "8 bytes per thread"), ("threads_per_block", [384], "power"),
                              ("threads_per_block", [2048], "power of two <= 1024")):
        bad = tmp_path / f"{key}-{value}"
        shutil.copytree(path, bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg["dfloat11_config"][key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(AssertionError, match=match):
            official_load(copy.deepcopy(model), str(bad))
    # a unit of 1-bit codes puts 32768 elements in a 512-thread block: 2052 + 2 * 32768 bytes > 48 KiB
    m = _OneLinear().bfloat16()
    torch.nn.init.zeros_(m.lin.weight)
    compress(m, tmp_path / "zeros", pattern={"lin": []}, **QUIET)
    with pytest.raises(AssertionError, match="over the 48 KiB limit"):
        official_load(_OneLinear().bfloat16(), str(tmp_path / "zeros"))
    torch.nn.init.normal_(m.lin.weight, std=float(torch.rand(1)) + 0.01)  # ~3-bit codes: fits
    compress(m, tmp_path / "random", pattern={"lin": []}, **QUIET)
    x = torch.randn(3, 256).bfloat16()
    with torch.no_grad():
        assert torch.equal(official_load(_OneLinear().bfloat16(), str(tmp_path / "random")).lin(x), m.lin(x))
