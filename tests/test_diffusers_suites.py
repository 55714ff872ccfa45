"""``bench/diffusers_suites.py``: Diffusers' own model and pipeline tests with the stock processors, then with radial
attention; ``bench/diffusers_offline_hub.py``, the hub stand-ins of the pipeline suites.

The real suites need a Diffusers checkout (not in CI); here a fake checkout holds a Wan test file in Diffusers' layout
whose dummy inputs the script rewrites, and whose tests pass or fail depending on the processors installed."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("diffusers_suites", REPO / "bench" / "diffusers_suites.py")
suites = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suites)

FAKE_WAN_TESTS = '''
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


def get_dummy_inputs():
    num_frames = 2
    return torch.randn(1, 4, num_frames, 16, 16)


def output_shape():
    return (4, 2, 16, 16)


def _model():
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()


def test_output_shape():
    x = get_dummy_inputs()
    with torch.no_grad():
        out = _model()(x, torch.tensor([500]), torch.randn(1, 12, 16)).sample
    assert out.shape == (1, *output_shape())


def test_stock_processor():
    assert type(_model().blocks[0].attn1.processor) is WanAttnProcessor
'''


def _fake_checkout(root: Path, test_file: str, text: str) -> None:
    """A Diffusers checkout under ``root`` holding one test file (``tests/<test_file>``), its folders packages."""
    path = root / "tests" / test_file
    path.parent.mkdir(parents=True)
    for folder in path.relative_to(root).parents[:-1]:
        (root / folder / "__init__.py").write_text("")
    path.write_text(textwrap.dedent(text))


def test_rewrite_sets_the_frames_and_refuses_a_changed_file():
    name, rules = suites.SUITES["wan"]
    text = "num_frames = 2\nreturn (4, 2, 16, 16)\n"
    assert suites.rewrite(text, rules, 6) == "num_frames = 6\nreturn (4, 6, 16, 16)\n"
    assert suites.rewrite("num_frames = 3\nreturn (4, 3, 16, 16)\n", rules, 6) is None  # the suite changed upstream
    _, ltx_rules = suites.SUITES["ltx"]
    assert suites.rewrite("num_frames = 2\n(512, 4)", ltx_rules, 3) == "num_frames = 3\n(768, 4)"


def test_missing_checkout_is_refused_with_the_clone_command(tmp_path, capsys):
    with pytest.raises(SystemExit):
        suites.main(["--diffusers", str(tmp_path)])
    assert "git clone" in capsys.readouterr().err
    (tmp_path / "tests" / "models" / "transformers").mkdir(parents=True)
    with pytest.raises(SystemExit):
        suites.main(["--diffusers", str(tmp_path), "--families", "wan,sora"])
    assert "unknown families ['sora']" in capsys.readouterr().err


def test_runs_both_ways_and_reports_what_fails_only_with_radial(tmp_path, capsys):
    """Stock: both tests pass. Radial: the model still runs at the rewritten 6 latent frames (a sparse mask at block
    16), and the test that insists on the stock processor is reported as failing only with radial attention."""
    _fake_checkout(tmp_path, "models/transformers/test_models_transformer_wan.py", FAKE_WAN_TESTS)
    code = suites.main(["--diffusers", str(tmp_path), "--families", "wan", "--frames", "6", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("| wan |")]
    # two models given radial attention per run, one of them called, on a sparse mask
    assert rows == ["| wan | as shipped | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2; 1 (density 0.75) |",
                    "| wan | 6 latent frames | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2; 1 (density 0.31) |"]
    reported = out.split("failing only with radial attention:")
    assert len(reported) == 3  # the file as shipped, and its rewritten copy
    assert "test_models_transformer_wan.py::test_stock_processor'" in reported[1]
    assert "test_rd_long_models_transformer_wan.py::test_stock_processor'" in reported[2]


FAKE_WAN_PIPELINE_TESTS = '''
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from radial_diffusers.tiny import tiny_wan_pipeline


def get_dummy_inputs():
    return {"prompt": "dance monkey", "num_frames": 9, "height": 16, "width": 16, "num_inference_steps": 2,
            "guidance_scale": 1.0, "output_type": "pt", "generator": torch.Generator().manual_seed(0)}


def test_output_shape():
    inputs = get_dummy_inputs()
    video = tiny_wan_pipeline().to("cpu")(**inputs).frames
    assert video.shape[-2:] == (inputs["height"], inputs["width"])


def test_stock_processor():
    assert type(tiny_wan_pipeline().transformer.blocks[0].attn1.processor) is WanAttnProcessor
'''


def test_rewrite_pipeline_scales_the_sides_and_maps_the_frames():
    text = textwrap.dedent('''
        inputs = {"height": 16, "width": 32, "num_frames": 8, "frames": 8}
        image = Image.new("RGB", (16, 16))
        video = [Image.new("RGB", (32, 16))] * 8
        image_height = 16
        cond = torch.rand((1, 3, 32, 32))
        shape = (num_frames, 3, 16, 32)
        config = dict(sample_width=2, sample_height=2, patch=2)
    ''')
    want = textwrap.dedent('''
        inputs = {"height": 64, "width": 128, "num_frames": 9, "frames": 8}
        image = Image.new("RGB", (64, 64))
        video = [Image.new("RGB", (128, 64))] * 8
        image_height = 64
        cond = torch.rand((1, 3, 128, 128))
        shape = (num_frames, 3, 64, 128)
        config = dict(sample_width=8, sample_height=8, patch=2)
    ''')
    assert suites.rewrite_pipeline(text, 4, {8: 9}) == want
    assert suites.rewrite_pipeline('inputs = {"height": 48, "width": 48}', 4, {}) is None  # nothing it knows


def test_pipeline_level_applies_radial_attention_to_each_pipeline(tmp_path, capsys):
    """--level pipelines: radial attention goes onto every pipeline a test builds (steps from its scheduler); the
    shipped file runs at 16 x 16 pixels, the rewritten copy at 64 x 64, and the stock-only test is reported."""
    _fake_checkout(tmp_path, "pipelines/wan/test_wan.py", FAKE_WAN_PIPELINE_TESTS)
    code = suites.main(["--diffusers", str(tmp_path), "--level", "pipelines", "--families", "wan", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("| wan |")]
    assert rows[0] == "| wan | test_wan.py | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2; 0 |"  # 16 x 16: every block kept
    assert rows[1].startswith("| wan | test_wan.py, sides x4 | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2; 1 (density 0.")
    # the other Wan files are not in the fake checkout
    others = len(suites.PIPELINE_SUITES["wan"]) - 1
    assert others and len(rows) == 2 + others and all(": missing from this checkout | - |" in r for r in rows[2:])
    assert "test_rd_long_wan.py::test_stock_processor'" in out


def test_offline_hub_stand_ins_load_offline(tmp_path):
    """The stand-ins load with the hub's own cache lookup, offline: the T5 encoder and its tokenizer (the Wan,
    CogVideoX, LTX-Video and Mochi pipeline suites), CLIP, HunyuanVideo's tokenizer subfolder, Qwen's chat tokenizer,
    and the LTX-2 suites' Gemma 3 with its tokenizer."""
    from transformers import (AutoTokenizer, CLIPTextModel, CLIPTokenizer, Gemma3ForConditionalGeneration,
                              LlamaTokenizer, Qwen2Tokenizer, T5EncoderModel)

    spec = importlib.util.spec_from_file_location("diffusers_offline_hub", REPO / "bench" / "diffusers_offline_hub.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert len(hub.build(tmp_path)) == 5
    cache = dict(cache_dir=tmp_path / "hub", local_files_only=True)
    t5 = T5EncoderModel.from_pretrained("hf-internal-testing/tiny-random-t5", **cache)
    tokens = AutoTokenizer.from_pretrained("hf-internal-testing/tiny-random-t5", **cache)("dance monkey")
    assert t5.config.d_model == 32 and tokens.input_ids[-1] == 1 and 2 not in tokens.input_ids  # </s>, no <unk>
    assert CLIPTextModel.from_pretrained("hf-internal-testing/tiny-random-clip", **cache).config.hidden_size == 32
    clip = CLIPTokenizer.from_pretrained("hf-internal-testing/tiny-random-clip", **cache)
    assert clip("a cat").input_ids[0] == clip.bos_token_id
    llama = LlamaTokenizer.from_pretrained("finetrainers/dummy-hunyaunvideo", subfolder="tokenizer", **cache)
    assert llama("a cat").input_ids[0] == llama.bos_token_id
    qwen = Qwen2Tokenizer.from_pretrained("hf-internal-testing/tiny-random-Qwen2VLForConditionalGeneration", **cache)
    assert qwen.chat_template
    gemma = Gemma3ForConditionalGeneration.from_pretrained("hf-internal-testing/tiny-gemma3", **cache)
    # the LTX-2 suites' connectors are 4 heads x 8 wide and stack the embeddings and every layer's hidden states
    assert gemma.config.text_config.hidden_size == 32 and gemma.config.text_config.num_hidden_layers == 2
    gemma_tokens = AutoTokenizer.from_pretrained("hf-internal-testing/tiny-gemma3", **cache)("a cat")
    assert gemma_tokens.input_ids[0] == 2 and 3 not in gemma_tokens.input_ids  # <bos> first, no <unk>
