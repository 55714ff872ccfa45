"""The model-family registry: every entry is consistent, an unsupported class is refused untouched, and a family is
data (a throwaway family registered with only an entry, a processor and a tiny builder runs every feature)."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch
from diffusers import WanTransformer3DModel

import radial_diffusers as rd
from radial_diffusers import cli
from radial_diffusers.errors import RadialError, UnsupportedModelError
from radial_diffusers.families import (
    GENERIC_QUANT_EXCLUDE,
    ForwardArgs,
    ModelFamily,
    Preset,
    TinyModel,
    families,
    family_of,
    get_family,
    register_family,
    tiny_models,
    unregister_family,
)
from radial_diffusers.pipelines import detect_family, latent_geometry, load_pipeline
from radial_diffusers.processors import RadialWanAttnProcessor
from radial_diffusers.tiny import load_tiny
from tiny_calls import call_kwargs


# -- every registered entry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", families(), ids=lambda f: f.name)
def test_entry_is_consistent(family):
    proc = family.processor_class()
    assert isinstance(proc, type) and callable(proc)
    assert family.tiny, f"{family.name} has no tiny pipeline to test it with"
    assert re.compile(family.lora_targets) and all(re.compile(p) for p in family.quant_exclude)
    assert 0 <= family.preset.dense_layers and family.preset.source
    for regex in family.df11_pattern:
        re.compile(regex)
    import diffusers

    for name, substitutes in family.pipeline_substitutes.items():  # real Diffusers classes, text- then image-to-video
        assert len(substitutes) == 2 and all(hasattr(diffusers, n) for n in (name, *substitutes))
        assert "image" not in inspect.signature(getattr(diffusers, substitutes[0]).__call__).parameters
        assert "image" in inspect.signature(getattr(diffusers, substitutes[1]).__call__).parameters
    for text, image in family.image_to_video.items():  # real Diffusers classes: text-, then image-to-video
        assert "image" not in inspect.signature(getattr(diffusers, text).__call__).parameters
        assert "image" in inspect.signature(getattr(diffusers, image).__call__).parameters
    for variant in family.variants:  # each variant names the tiny model that is it
        tiny = next(t for t in family.tiny if t.name == variant.tiny)
        pipe = tiny.build()
        assert family.variant_for(pipe, pipe.transformer) is variant


def test_tiny_pipelines_belong_to_their_family(tiny_name, tiny_pipe):
    family, tiny = tiny_models()[tiny_name]
    assert detect_family(tiny_pipe) is family and family_of(tiny_pipe.transformer) is family
    family.check_forward(tiny_pipe.transformer)
    modules = family.attention_modules(tiny_pipe.transformer)
    assert [i for i, _ in modules] == list(range(len(modules))) and modules
    # the registry geometry is genuinely sparse at block 16, measured on a real call
    state = rd.apply_radial_attention(tiny_pipe, rd.RadialConfig(block_size=16, dense_steps=0, dense_layers=0))
    try:
        with torch.no_grad():
            tiny_pipe(prompt="a cat", num_inference_steps=2, output_type="latent",  # Mochi needs >= 2
                      **call_kwargs(tiny_pipe, tiny_name, batch=1, cfg=False))
    finally:
        rd.remove_radial_attention(tiny_pipe)
    assert state.geometry == latent_geometry(tiny_pipe, *tiny.geometry)
    assert state.stats().density < 0.6 and set(state.sparse_calls) == {i for i, _ in modules}


def test_ltx_condition_pipeline_is_named_and_substituted():
    """LTX-Video 0.9.7 loads as LTXConditionPipeline, whose transformer calls carry video_coords instead of the grid:
    applying radial attention to it warns at once with the fix, and readable_pipeline builds the pipeline of the
    same modules that passes the grid, on which the mask is genuinely sparse."""
    import diffusers

    from radial_diffusers.pipelines import readable_pipeline
    from radial_diffusers.tiny import tiny_ltx_pipeline

    ltx = tiny_ltx_pipeline()
    condition = diffusers.LTXConditionPipeline(**ltx.components)
    with pytest.warns(UserWarning, match=r"LTXConditionPipeline does not pass .* LTXPipeline\(\*\*pipe.components\)"):
        rd.apply_radial_attention(condition, rd.RadialConfig(block_size=16))
    rd.remove_radial_attention(condition)
    t2v, i2v = (readable_pipeline(condition, image_to_video=x) for x in (False, True))
    assert (type(t2v).__name__, type(i2v).__name__) == ("LTXPipeline", "LTXImageToVideoPipeline")
    assert t2v.transformer is ltx.transformer and i2v.vae is ltx.vae  # the same modules, nothing copied
    assert readable_pipeline(ltx, image_to_video=False) is ltx
    subclass = type("MyConditionPipeline", (diffusers.LTXConditionPipeline,), {})(**ltx.components)
    assert type(readable_pipeline(subclass, image_to_video=False)).__name__ == "LTXPipeline"  # matched over the MRO
    state = rd.apply_radial_attention(t2v, rd.RadialConfig(block_size=16, dense_steps=0, dense_layers=0))
    try:
        with torch.no_grad():
            t2v(prompt="a cat", num_inference_steps=1, output_type="latent",
                **call_kwargs(t2v, "tiny-ltx", batch=1, cfg=False))
    finally:
        rd.remove_radial_attention(t2v)
    assert state.stats().density < 0.6 and state.sparse_calls


def test_read_call_by_argument_name_not_position(tiny_pipes):
    """The hook reads the latent, timestep and text by name: keyword and positional calls read the same."""
    pipe = tiny_pipes["tiny-hunyuan"]
    family = detect_family(pipe)
    t = pipe.transformer
    x = torch.randn(1, t.config.in_channels, 3, 8, 6)
    ehs = torch.randn(1, 7, t.config.text_embed_dim)
    step = torch.tensor([500.0])
    kw = family.read_call(t, (), {"hidden_states": x, "timestep": step, "encoder_hidden_states": ehs})
    pos = family.read_call(t, (x, step, ehs), {})
    assert kw.latent_grid == pos.latent_grid == (3, 8, 6) and kw.text_tokens == pos.text_tokens == 7
    assert kw.timestep is step and pos.timestep is step


def test_registry_rejects_clashes_and_bad_entries():
    wan = get_family("wan")
    with pytest.raises(ValueError, match="registered already"):
        register_family(wan)
    from dataclasses import replace

    with pytest.raises(ValueError, match="already belong to family 'wan'"):
        register_family(replace(wan, name="wan-copy"))
    with pytest.raises(ValueError, match="text_position"):
        replace(wan, text_position="middle")
    with pytest.raises(ValueError, match="forward.text"):
        replace(wan, text_position="after")  # a joint text sequence needs the argument that carries it
    with pytest.raises(UnsupportedModelError, match="unknown model family 'sora'.*wan"):
        get_family("sora")
    with pytest.raises(ValueError):  # an unknown family name is also a ValueError, as before the registry
        rd.radial_block_mask(4, 64, model="sora")


def test_unsupported_transformer_is_refused_and_left_unchanged():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8)
    before = {name: type(p) for name, p in model.attn_processors.items()}
    with pytest.raises(UnsupportedModelError) as err:
        rd.apply_radial_attention(model)
    msg = str(err.value)
    assert "SD3Transformer2DModel" in msg and "WanPipeline" in msg and "HunyuanVideoPipeline" in msg
    assert isinstance(err.value, TypeError) and isinstance(err.value, RadialError)
    assert {name: type(p) for name, p in model.attn_processors.items()} == before
    assert getattr(model, "_radial_state", None) is None

    class Pipe:  # a pipeline-like object: detection goes through its transformer
        transformer = model

    with pytest.raises(UnsupportedModelError, match="Pipe .transformer SD3Transformer2DModel. is not supported"):
        detect_family(Pipe())


def test_cli_prints_any_radial_error_as_one_line(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise UnsupportedModelError("FooPipeline is not supported; supported: Wan2.1 (WanPipeline)")

    monkeypatch.setattr(cli, "_load_pipeline", boom)
    assert cli.main(["generate", "--model", "tiny-wan", "--out", "/tmp/never/x.mp4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["radial-diffusers generate: error: FooPipeline is not supported; supported: Wan2.1 (WanPipeline)"]

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_load_pipeline", bug)
    with pytest.raises(KeyError):  # not a user error: the traceback stays
        cli.main(["generate", "--model", "tiny-wan", "--out", "/tmp/never/x.mp4"])


# -- a family is data ---------------------------------------------------------------------------------------------


class ToyVideoTransformer(WanTransformer3DModel):
    """A Wan transformer under another class name: served by its own registry entry, not Wan's."""


class ToyAttnProcessor(RadialWanAttnProcessor):
    """The throwaway family's processor (the Wan one: the attention code is the same)."""


def build_toy(seed: int = 0):
    from radial_diffusers.tiny import tiny_wan_pipeline

    pipe = tiny_wan_pipeline(seed=seed)
    toy = ToyVideoTransformer.from_config(pipe.transformer.config)
    toy.load_state_dict(pipe.transformer.state_dict())
    pipe.transformer = toy.eval()
    return pipe


TOY = ModelFamily(
    name="toy",
    label="Toy",
    transformer_classes=("ToyVideoTransformer",),
    pipelines=("WanPipeline",),
    processor=f"{__name__}:ToyAttnProcessor",
    attention_modules=lambda t: [(i, block.attn1) for i, block in enumerate(t.blocks)],
    patch_size=lambda config: tuple(config.patch_size),
    preset=Preset(dense_layers=0, dense_steps=1, decay_factor=0.5, source="a test family"),
    forward=ForwardArgs(),
    df11_pattern={r"blocks\.\d+": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]},
    quant_exclude=(*GENERIC_QUANT_EXCLUDE, r"blocks\.0\..*"),
    tiny=(TinyModel("tiny-toy", f"{__name__}:build_toy", (("max_sequence_length", 16),), geometry=(17, 128, 128)),),
    default_fps=8,
)


@pytest.fixture
def toy():
    register_family(TOY)
    try:
        yield TOY
    finally:
        unregister_family("toy")


def test_throwaway_family_apply_remove_and_sparse(toy):
    pipe = load_pipeline("tiny-toy")
    assert detect_family(pipe) is toy and family_of(WanTransformer3DModel) is get_family("wan")
    kwargs = dict(call_kwargs(pipe, "tiny-toy", batch=1), num_inference_steps=3, output_type="latent")

    def run():
        with torch.no_grad():
            return pipe(prompt=["a cat"], generator=torch.Generator().manual_seed(0), **kwargs).frames

    stock = run()
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16))
    assert state.model == "toy" and state.family is toy
    assert all(type(p) is ToyAttnProcessor for p in state.processors)
    assert state.config.with_preset("toy").decay_factor == 0.5
    sparse = run()
    assert sum(state.sparse_calls.values()) > 0 and state.dense_calls[0] > 0  # dense_steps=1 from the preset
    assert not torch.equal(sparse, stock)
    rd.remove_radial_attention(pipe)
    assert torch.equal(run(), stock)


def test_throwaway_family_generate_compress_quantize(toy, tmp_path):
    out = tmp_path / "toy.mp4"
    assert cli.main(["generate", "--model", "tiny-toy", "--frames", "17", "--height", "64", "--width", "64",
                     "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["family"] == "toy" and report["fps"] == 8 and out.stat().st_size > 0

    from radial_diffusers.dfloat11 import compress, load_dfloat11

    source = build_toy(0).transformer.to(torch.bfloat16)
    result = compress(source, tmp_path / "df11", progress=False)
    assert result.units == len(source.blocks)  # the entry's pattern: one unit per block, attn1 only
    target = build_toy(1).transformer.to(torch.bfloat16)
    load_dfloat11(target, tmp_path / "df11", progress=False)
    from radial_diffusers.dfloat11 import decompress

    decompress(target)
    a, b = source.state_dict(), target.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []

    model = build_toy(0).transformer
    rd.quantize(model, "int8-weight")
    assert type(model.blocks[0].attn1.to_q.weight) is torch.nn.Parameter  # the entry's exclusion
    assert type(model.blocks[1].attn1.to_q.weight).__module__.startswith("torchao")


def test_readme_table_is_the_registry():
    from pathlib import Path

    from radial_diffusers.families import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme


# -- Wan2.2 A14B: two experts, one schedule -----------------------------------------------------------------------


@pytest.mark.parametrize("name, preset", [("tiny-wan2.2", "wan2.2"), ("tiny-wan2.2-vace", "wan2.2-vace")])
def test_wan22_both_experts_one_step_index_and_policy(tiny_pipes, name, preset):
    pipe = tiny_pipes[name]
    kwargs = dict(call_kwargs(pipe, name, batch=1), num_inference_steps=6, output_type="latent")

    def run():
        with torch.no_grad():
            return pipe(prompt="a cat", generator=torch.Generator().manual_seed(0), **kwargs).frames

    stock = run()
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=2))
    try:
        high, low = state.experts
        assert high is state and high._transformer() is pipe.transformer and low._transformer() is pipe.transformer_2
        assert high.preset == low.preset == preset
        preset = rd.RadialConfig().with_preset(preset)
        # the official Wan2.2 processors run block 64 (Wan2.1's and the others' 128)
        assert (preset.dense_layers, preset.dense_steps, preset.decay_factor) == (1, 11 / 40, 0.8)
        assert preset.block_size == 64
        assert rd.RadialConfig().with_preset("wan").block_size == 128
        assert high.config.block_size == 16  # an explicit block size is kept
        for s in state.experts:
            s.record = True
        sparse = run()
    finally:
        rd.remove_radial_attention(pipe)
    steps = {name: sorted({step for step, _, _ in s.trace}) for name, s in zip(("high", "low"), state.experts)}
    # the pipeline switches experts at boundary_ratio: each ran some steps, together all six, with global indices
    assert steps["high"] and steps["low"] and sorted(steps["high"] + steps["low"]) == list(range(6))
    assert max(steps["high"]) < min(steps["low"])
    for s in state.experts:
        for step, layer, was_sparse in s.trace:
            # dense_steps=2 counts schedule steps, whichever expert runs; dense_layers=1 (preset) per expert
            assert was_sparse == (step >= 2 and layer >= 1), (step, layer, was_sparse)
    assert any(sp for s in state.experts for _, _, sp in s.trace)
    assert not torch.equal(sparse, stock)
    assert torch.equal(run(), stock)
    for expert in (pipe.transformer, pipe.transformer_2):
        assert not any(isinstance(p, RadialWanAttnProcessor) for p in expert.attn_processors.values())
    state = rd.apply_radial_attention(pipe)  # no block size: the preset's, resolved once at apply
    assert [s.config.block_size for s in state.experts] == [64, 64]
    rd.remove_radial_attention(pipe)


def test_a_pipeline_with_only_its_low_noise_expert(tiny_pipes):
    """Diffusers' Wan pipelines take ``transformer=None`` with ``transformer_2`` set (only the low-noise expert
    loaded): the family is read from ``transformer_2``, which gets radial attention and the Wan2.2 preset."""
    from diffusers import WanPipeline

    pipe = WanPipeline(**{**tiny_pipes["tiny-wan2.2"].components, "transformer": None}, boundary_ratio=0.9)
    assert detect_family(pipe).name == "wan"
    state = rd.apply_radial_attention(pipe)
    try:
        assert state._transformer() is pipe.transformer_2 and state.experts == (state,) and state.preset == "wan2.2"
        assert all(isinstance(p, RadialWanAttnProcessor) for n, p in pipe.transformer_2.attn_processors.items()
                   if ".attn1." in n)
    finally:
        rd.remove_radial_attention(pipe)
    assert not any(isinstance(p, RadialWanAttnProcessor) for p in pipe.transformer_2.attn_processors.values())


def test_wan22_generate_counts_sparse_steps_of_both_experts(tmp_path):
    out = tmp_path / "w22.mp4"
    assert cli.main(["generate", "--model", "tiny-wan2.2", "--frames", "33", "--height", "64", "--width", "64",
                     "--steps", "4", "--dense-steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["family"] == "wan" and report["sparse_steps"] == 3  # steps 1-3, on either expert


# -- DF11 and quantization for every family, from its registry entry ---------------------------------------------


def _subjects(feature: str) -> list:
    """``(family, tiny model)`` for every family, and every variant, whose features include ``feature``: the family's
    first tiny model, or the tiny model that is that variant (Wan2.2 TI2V-5B: tiny-wan2.2-ti2v)."""
    out = []
    for family in families():
        if feature in family.features:
            out.append(pytest.param(family, family.tiny[0], id=family.name))
        for variant in family.variants:
            if feature in variant.features:
                tiny = next(t for t in family.tiny if t.name == variant.tiny)
                out.append(pytest.param(family, tiny, id=variant.name))
    return out


def _has_submodule(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@pytest.mark.parametrize("family, tiny", _subjects("dfloat11"))
def test_dfloat11_round_trip_with_the_entry_pattern(family, tiny, tmp_path):
    from radial_diffusers.dfloat11 import compress, decompress, default_pattern, load_dfloat11

    from radial_diffusers.dfloat11.patterns import find_units, join

    source = tiny.build(seed=0).transformer.to(torch.bfloat16)
    # every Linear the entry lists, in every module its regexes match, is in a unit (Mochi's last block, with
    # fewer Linears than the others, gets a regex of its own)
    listed = {join(name, a) for regex, attrs in family.df11_pattern.items() for name, module in source.named_modules()
              if re.fullmatch(regex, name) for a in attrs if _has_submodule(module, a)}
    units = find_units(source, default_pattern(source))
    assert {join(u.name, a) for u in units for a in u.attrs} == listed
    result = compress(source, tmp_path / "df11", progress=False)
    assert result.units > 0 and result.ratio < 1.0
    target = tiny.build(seed=1).transformer.to(torch.bfloat16)
    load_dfloat11(target, tmp_path / "df11", progress=False)
    decompress(target)
    a, b = source.state_dict(), target.state_dict()
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("name, blocks", [("tiny-mochi", r"transformer_blocks\.\d+"),
                                          ("tiny-wan-vace", r"(vace_)?blocks\.\d+")])
def test_dfloat11_default_pattern_compresses_every_block_linear(name, blocks):
    """Blocks that differ (Mochi's last one has no text output path and norm1_context.linear_1; Wan VACE's first
    control block alone has proj_in): every Linear of every block is in a unit, each block's under one regex."""
    from radial_diffusers.dfloat11 import default_pattern
    from radial_diffusers.dfloat11.patterns import find_units, join

    source = load_tiny(name).transformer
    pattern = default_pattern(source)
    in_blocks = {n for n, m in source.named_modules() if isinstance(m, torch.nn.Linear)
                 and re.match(blocks + r"\.", n)}
    assert {join(u.name, a) for u in find_units(source, pattern) for a in u.attrs} == in_blocks
    for n, _ in source.named_modules():
        assert sum(bool(re.fullmatch(r, n)) for r in pattern) <= 1, n


@pytest.mark.parametrize("family, tiny", _subjects("quantization"))
def test_quantize_follows_the_entry_exclusions(family, tiny):
    """The CLI's in-memory quantization (``generate --quant``) quantizes every expert of the pipeline (both of Wan2.2
    A14B), each with the entry's exclusions."""
    pipe = tiny.build(seed=0)
    models = [m for m in (getattr(pipe, n, None) for n in family.experts) if m is not None]
    assert len(models) == (2 if tiny.name in ("tiny-wan2.2", "tiny-wan2.2-vace") else 1)
    cli._quantize_transformer(pipe, "int8-weight", 128, "cpu")
    for model in models:
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        excluded = {n for n in names if any(re.fullmatch(p, n) for p in family.quant_exclude)}
        assert excluded and len(excluded) < len(names)
        for n, m in model.named_modules():
            if n in names:
                quantized = type(m.weight).__module__.startswith("torchao")
                assert quantized == (n not in excluded), n


def test_dfloat11_refuses_a_two_expert_pipeline(tmp_path):
    from radial_diffusers.errors import ModelLoadError
    from radial_diffusers.pipelines import load_pipeline

    with pytest.raises(ModelLoadError, match="replaces one transformer, and tiny-wan2.2 has 2 experts"):
        load_pipeline("tiny-wan2.2", dfloat11=str(tmp_path / "any"))
    folder = tmp_path / "a14b"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "WanTransformer3DModel"],
                                                         "transformer_2": ["diffusers", "WanTransformer3DModel"]}))
    with pytest.raises(ModelLoadError, match="has 2 experts"):  # read from model_index.json, before loading
        load_pipeline(str(folder), dfloat11=str(tmp_path / "any"))


@pytest.mark.parametrize("name", ["tiny-cogvideox", "tiny-ltx", "tiny-mochi"])
def test_generate_runs_every_new_family(name, tmp_path):
    out = tmp_path / "v.mp4"
    family, tiny = tiny_models()[name]
    frames, height, width = map(str, tiny.geometry)  # a geometry where the tiny model's layout is sparse
    assert cli.main(["generate", "--model", name, "--frames", frames, "--height", height, "--width", width,
                     "--steps", "3", "--dense-steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["family"] == family.name and report["fps"] == family.default_fps and report["sparse_steps"] == 2
    assert out.stat().st_size > 0


def test_review_fixes_variant_preset_geometry_and_training_gate(tmp_path, capsys):
    # generate resolves the variant's preset (Wan2.2 A14B: decay 0.8), not the family's
    out = tmp_path / "w22.mp4"
    assert cli.main(["generate", "--model", "tiny-wan2.2", "--frames", "9", "--height", "32", "--width", "32",
                     "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["preset"] == "wan2.2" and report["config"]["decay_factor"] == 0.8
    # Mochi's frame rule (6k+1): rounded by it where the name tells the family; a model whose family its name does
    # not tell is checked once loaded, as one line before the pipeline runs
    capsys.readouterr()
    assert cli.main(["generate", "--model", "tiny-mochi", "--frames", "17", "--height", "64", "--width", "64",
                     "--steps", "2", "--out", str(tmp_path / "m.mp4")]) == 0
    assert "--frames 17 rounded to 13 (6k+1)" in capsys.readouterr().err
    mochi = load_tiny("tiny-mochi")
    given = cli.build_parser().parse_args(["generate", "--frames", "17"])
    with pytest.raises(cli.CLIError, match="--frames 17: MochiPipeline needs 6k\\+1 frames"):
        cli._check_pipeline_rules(mochi, get_family("mochi"), 17, 64, 64, given)
    # the mask command uses the family's VAE and patch (LTX-Video: 8x time, 32x space, patch 1)
    assert cli.main(["mask", "--model", "ltx", "--height", "512", "--width", "768", "--frames", "121", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latent_geometry"] == [16, 16, 24]
    # LoRA training refuses a family it does not support, naming the ones it does
    from lora_training.config import ConfigError, load_config
    from lora_training.train import _adapter

    config = {"model": "tiny-wan-vace", "data_dir": str(tmp_path), "output_dir": str(tmp_path / "o"), "num_frames": 9}
    with pytest.raises(ConfigError, match="does not support Wan VACE \\(tiny-wan-vace\\).*Wan2.1 / Wan2.2, Hunyuan"):
        load_config(config, check_paths=False)  # before loading: the name tells the family
    cfg = load_config({**config, "model": "tiny-wan"}, check_paths=False)
    with pytest.raises(ConfigError, match="does not support Wan VACE \\(WanVACEPipeline\\).*Wan2.1 / Wan2.2"):
        _adapter(cfg, load_tiny("tiny-wan-vace"))  # and the loaded pipeline is checked again
    # removing from an unsupported pipeline is a no-op; a registry entry has identity equality and can be hashed
    assert rd.remove_radial_attention(type("P", (), {"transformer": torch.nn.Linear(2, 2)})()) is None
    assert len({get_family("wan"), get_family("wan")}) == 1


def test_wan22_ti2v_per_token_timesteps_step_and_geometry(tiny_pipes):
    """Wan2.2 TI2V-5B: the timestep is per token ``(B, S)``; the hook steps on it, and the geometry comes from the
    latent (48 channels, 16x spatial VAE), not from assumptions about the VAE."""
    pipe = tiny_pipes["tiny-wan2.2-ti2v"]
    state = rd.apply_radial_attention(pipe, rd.RadialConfig(block_size=16, dense_steps=1))
    try:
        assert state.preset == "wan2.2-ti2v"
        state.record = True
        with torch.no_grad():
            pipe(prompt="a cat", num_frames=33, height=256, width=256, num_inference_steps=4, output_type="latent",
                 max_sequence_length=16, guidance_scale=1.0)
    finally:
        rd.remove_radial_attention(pipe)
    assert state.geometry == (9, 8, 8) == latent_geometry(pipe, 33, 256, 256)
    assert sorted({step for step, _, _ in state.trace}) == [0, 1, 2, 3]
    assert all(sparse == (step >= 1 and layer >= 1) for step, layer, sparse in state.trace)


@pytest.mark.parametrize("name", ["tiny-hunyuan", "tiny-hunyuan1.5"])
def test_default_lora_targets_leave_the_text_token_refiner_out(name):
    """The refiner's attention sees the text only, never the long video: a length-extension LoRA leaves it alone."""
    import re

    family, _ = tiny_models()[name]
    names = [n for n, _ in load_tiny(name).transformer.named_modules()]
    hits = [n for n in names if re.fullmatch(family.lora_targets, n)]
    assert hits and not any("token_refiner" in n for n in hits)
    assert any("token_refiner" in n and n.endswith(".to_q") for n in names)  # there is one to leave out
