"""``bench/diffusers_suites.py``: Diffusers' own model tests with the stock processors, then with radial attention.

The real suites need a Diffusers checkout (not in CI); here a fake checkout holds one Wan test file in Diffusers'
layout whose dummy inputs the script rewrites, and whose tests pass or fail depending on the processors installed."""

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
    folder = tmp_path / "tests" / "models" / "transformers"
    folder.mkdir(parents=True)
    for d in (tmp_path / "tests", tmp_path / "tests" / "models", folder):
        (d / "__init__.py").write_text("")
    (folder / "test_models_transformer_wan.py").write_text(textwrap.dedent(FAKE_WAN_TESTS))
    code = suites.main(["--diffusers", str(tmp_path), "--families", "wan", "--frames", "6", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("| wan |")]
    assert rows == ["| wan | as shipped | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2 |",
                    "| wan | 6 latent frames | 2 / 0 / 0 / 0 | 1 / 1 / 0 / 0 | 2 |"]
    reported = out.split("failing only with radial attention:")
    assert len(reported) == 3  # the file as shipped, and its rewritten copy
    assert "test_models_transformer_wan.py::test_stock_processor'" in reported[1]
    assert "test_rd_long_models_transformer_wan.py::test_stock_processor'" in reported[2]
