"""CLI errors found before any work starts, each one line naming the CLI flag and the fix; and a clean output.

CPU, tiny models, small sizes. Where a test must show that nothing was loaded, the loader is replaced by one that fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radial_diffusers.cli as cli
from radial_diffusers.errors import first_sentences
from radial_diffusers._io import NotWritableError, check_writable
from radial_diffusers.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "tiny-wan", "--frames", "5", "--height", "32", "--width", "32", "--steps", "1", "--device", "cpu"]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"radial-diffusers {command}: error: ")
    return line


@pytest.fixture
def no_loading(monkeypatch):
    """Make any model load fail loudly, to prove an error came first."""
    import radial_diffusers.tiny as tiny

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(cli, "_load_pipeline", refuse)
    monkeypatch.setattr(tiny, "load_tiny", refuse)


@pytest.fixture
def locked_dir(tmp_path):
    """A folder no file can be created in: immutable (root; chmod does not bind root) or read-only (other users)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


# -- unwritable outputs ------------------------------------------------------------------------------------------------


def test_check_writable(tmp_path, locked_dir):
    assert check_writable(tmp_path / "new" / "deeper" / "v.mp4", "--out") == tmp_path / "new" / "deeper" / "v.mp4"
    assert not (tmp_path / "new").exists()  # checked, not created
    assert list(tmp_path.iterdir()) == [locked_dir]  # no probe file left behind
    with pytest.raises(NotWritableError, match=rf"^--out {locked_dir}/v.mp4: cannot write in {locked_dir} \("):
        check_writable(locked_dir / "v.mp4", "--out")
    with pytest.raises(NotWritableError, match="cannot write in"):  # missing folders would be created in it
        check_writable(locked_dir / "a" / "b", "output_dir")
    with pytest.raises(NotWritableError, match=f"cannot write in {locked_dir} "):  # an existing output folder
        check_writable(locked_dir, "OUT")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritableError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "v.mp4", "--out")


@pytest.mark.parametrize("command", [
    ["generate", "--out", "{d}/v.mp4"],
    ["mask", "--out", "{d}/m.png"],
    ["compress", "tiny-wan", "{d}/df11", "--cast-bf16"],
    ["quantize", "tiny-wan", "{d}/q", "--scheme", "int8-weight"],
])
def test_unwritable_output_is_one_line_before_any_work(command, locked_dir, no_loading, capsys):
    argv = [part.format(d=locked_dir) for part in command]
    assert main(argv) == 2
    line = _one_line_error(capsys, argv[0])
    assert f"cannot write in {locked_dir}" in line and "choose another location" in line


# -- backend vs device ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["triton", "flex"])
def test_cuda_backend_on_cpu_is_refused_before_loading(backend, monkeypatch, no_loading, tmp_path, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["generate", *SMALL, "--backend", backend, "--out", str(tmp_path / "v.mp4")]) == 2
    line = _one_line_error(capsys, "generate")
    assert f"--backend {backend}" in line and "on cpu" in line and "use --backend torch or auto" in line
    assert ("TRITON_INTERPRET=1" in line) == (backend == "triton")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,interpret,says", [
    ([], False, "needs a CUDA GPU with fp8 tensor cores"),
    (["--dtype", "bfloat16", "--backend", "torch"], False, "drop --backend torch"),
    (["--backend", "triton"], True, "this run is float32: add --dtype bfloat16"),  # the interpreter, float32
])
def test_fp8_attention_where_it_cannot_run_is_refused_before_loading(extra, interpret, says, monkeypatch, no_loading,
                                                                   tmp_path, capsys):
    if interpret:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = ["generate", *SMALL, "--attention-precision", "fp8", *extra, "--out", str(tmp_path / "v.mp4")]
    assert main(args) == 2
    line = _one_line_error(capsys, "generate")
    assert "--attention-precision fp8" in line and says in line
    assert list(tmp_path.iterdir()) == []


# -- masks with an empty query row -------------------------------------------------------------------------------------


def _with_empty_row(real):
    def build(*args, **kwargs):
        mask = real(*args, **kwargs).clone()
        mask[-1] = False  # the last query block keeps nothing
        return mask

    return build


def test_mask_with_an_empty_query_row_is_refused(monkeypatch, tmp_path, capsys):
    import radial_diffusers.masks as masks

    monkeypatch.setattr(masks, "radial_block_mask", _with_empty_row(masks.radial_block_mask))
    assert main(["mask", "--height", "64", "--width", "64", "--frames", "17", "--block-size", "16",
                 "--out", str(tmp_path / "m.png")]) == 2
    line = _one_line_error(capsys, "mask")
    assert "keeps no key block for 1 of its 5 query blocks" in line and "--block-size 16" in line
    assert not (tmp_path / "m.png").exists()


def test_generate_refuses_an_empty_query_row_before_generating(monkeypatch, tmp_path, capsys):
    import radial_diffusers.integration as integration

    monkeypatch.setattr(integration, "radial_block_mask", _with_empty_row(integration.radial_block_mask))
    assert main(["generate", *SMALL, "--out", str(tmp_path / "v.mp4")]) == 2
    line = _one_line_error(capsys, "generate")
    assert "keeps no key block" in line and "--attention dense" in line
    assert list(tmp_path.iterdir()) == []  # no video of attention to nothing


# -- messages in CLI terms -----------------------------------------------------------------------------------------


def test_compress_existing_out_names_the_flag_before_loading(tmp_path, no_loading, capsys):
    (tmp_path / "df11").mkdir()
    (tmp_path / "df11" / "notes.txt").write_text("mine")  # an empty folder would be written into, as a new one
    assert main(["compress", "tiny-wan", str(tmp_path / "df11"), "--cast-bf16"]) == 2
    line = _one_line_error(capsys, "compress")
    assert line.endswith("exists; choose a new directory or pass --overwrite") and "overwrite=True" not in line


def test_overwrite_replaces_only_earlier_outputs(tmp_path, no_loading, monkeypatch, capsys):
    """--overwrite never deletes a folder of other files, the current folder (or one above it) or a file, and
    generate refuses a folder where it writes a file, all before any model loads."""
    user = tmp_path / "userdata"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    cases = [(["compress", "tiny-wan", str(user), "--overwrite", "--cast-bf16"], "compress", "holds other files"),
             (["quantize", "tiny-wan", str(user), "--overwrite", "--scheme", "int8-weight"], "quantize",
              "holds other files"),
             (["eval", *SMALL, "--out", str(user), "--overwrite"], "eval", "holds other files"),
             (["eval", *SMALL, "--out", ".", "--overwrite"], "eval", "is the current folder or contains it"),
             (["eval", *SMALL, "--out", str(user / "thesis.txt"), "--overwrite"], "eval", "is not a folder"),
             (["compress", "tiny-wan", str(tmp_path / "new"), "--subfolder", "vae"], "compress",
              "--subfolder vae: tiny-wan is built in memory and compress takes one of its transformers")]
    monkeypatch.chdir(tmp_path)
    for argv, command, says in cases:
        assert main(argv) == 2, argv
        assert says in _one_line_error(capsys, command), argv
    assert (user / "thesis.txt").read_text() == "years of work"
    (tmp_path / "v.mask.png").mkdir()
    assert main(["generate", *SMALL, "--out", str(tmp_path / "v.mp4")]) == 2
    assert "v.mask.png is a folder" in _one_line_error(capsys, "generate")


def test_compress_and_quantize_take_either_expert_and_say_there_are_two(tmp_path, capsys):
    """On a two-expert pipeline (Wan2.2 A14B) compress / quantize take `transformer` and say that `transformer_2` is
    left; --subfolder transformer_2 takes that one (a tiny model too); a tiny model without it refuses the flag."""
    from radial_diffusers.dfloat11 import decompress, load_dfloat11
    from radial_diffusers.tiny import load_tiny

    pipe = load_tiny("tiny-wan2.2", 0)
    for sub, expert in ((None, pipe.transformer), ("transformer_2", pipe.transformer_2)):
        out = tmp_path / f"df11-{sub}"
        assert main(["compress", "tiny-wan2.2", str(out), "--cast-bf16", *(["--subfolder", sub] if sub else [])]) == 0
        err = capsys.readouterr().err
        assert ("note: tiny-wan2.2 has two experts, and this run compressed `transformer` (high noise) only; for "
                "`transformer_2` (low noise) run again with --subfolder transformer_2" in err) == (sub is None), err
        loaded = decompress(load_dfloat11(None, out)).state_dict()
        assert loaded.keys() == expert.state_dict().keys()
        assert all(torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in expert.state_dict().items())
    assert not torch.equal(pipe.transformer.blocks[0].attn1.to_q.weight, pipe.transformer_2.blocks[0].attn1.to_q.weight)
    if importlib.util.find_spec("torchao") is not None:
        assert main(["quantize", "tiny-wan2.2", str(tmp_path / "q"), "--scheme", "int8-weight"]) == 0
        assert "this run quantized `transformer` (high noise) only" in capsys.readouterr().err
    assert main(["compress", "tiny-wan", str(tmp_path / "x"), "--subfolder", "transformer_2"]) == 2
    assert _one_line_error(capsys, "compress").endswith("--subfolder transformer_2: tiny-wan has no transformer_2; "
                                                        "drop --subfolder")


def test_compress_takes_the_toy_models_bf16_weights_as_shipped(tmp_path, capsys):
    """toy-wan ships BF16 weights: compress needs no --cast-bf16, and the checkpoint decodes to them bit for bit."""
    from safetensors.torch import load_file

    from radial_diffusers.dfloat11 import decompress, load_dfloat11
    from radial_diffusers.toy.model import WEIGHTS_DIR

    assert main(["compress", "toy-wan", str(tmp_path / "df11")]) == 0
    shipped = load_file(str(Path(WEIGHTS_DIR) / "transformer.safetensors"))
    loaded = decompress(load_dfloat11(None, tmp_path / "df11")).state_dict()
    assert all(torch.equal(loaded[k].to(v.dtype), v) for k, v in shipped.items())


def test_compress_float32_says_why_bf16_and_what_the_cast_changes(tmp_path, capsys):
    assert main(["compress", "tiny-wan", str(tmp_path / "df11")]) == 2
    err = capsys.readouterr().err
    assert "DF11 compress" not in err  # refused before the first block is encoded (no progress bar)
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("radial-diffusers compress: error: ")
    assert "is torch.float32, and DF11 is a BF16 format" in line
    assert "Pass --cast-bf16 to round the weights to BF16 first" in line and "8 significant bits" in line
    assert "cast_to_bf16" not in line
    assert list(tmp_path.iterdir()) == []  # no partial folder


def test_int4_group_size_error_names_the_flag_and_the_values_that_work(tmp_path, capsys):
    pytest.importorskip("torchao")
    assert main(["quantize", "tiny-wan", str(tmp_path / "q"), "--scheme", "int4-weight-cpu"]) == 2
    line = _one_line_error(capsys, "quantize")
    assert "--group-size 128 divides none of the input sizes (24, 32)" in line
    assert line.endswith("use a group size that divides one of them: 16, 32") and "group_size" not in line
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("scheme, match", [
    ("int9-weight", "unknown quantization scheme 'int9-weight'; choose one of int8-weight"),
    ("fp8-dynamic", "quantization scheme 'fp8-dynamic' is not supported on cpu: .* Supported here: int8-weight")])
def test_generate_quant_scheme_checked_before_loading(scheme, match, no_loading, tmp_path, capsys):
    pytest.importorskip("torchao")
    assert main(["generate", "--model", "tiny-wan", "--quant", scheme, "--out", str(tmp_path / "v.mp4")]) == 2
    line = _one_line_error(capsys, "generate")
    assert re.search(f"error: --quant {scheme}: {match}", line), line


@pytest.mark.parametrize("name", ["./no/such/path", "no/such/path", "/no/such", "~/no-such-model/"])
def test_missing_local_path_says_so(name, capsys):
    assert main(["generate", "--model", name]) == 2
    line = _one_line_error(capsys, "generate")
    assert f"model path {name!r} does not exist" in line and "unknown model" not in line


def test_long_library_messages_are_cut_at_a_sentence_end():
    sentence = "The first sentence says what went wrong. "
    text = sentence * 20 + "\nsecond line"
    cut = first_sentences(text, limit=100)
    assert cut == (sentence * 2).strip()
    assert first_sentences("short: kept whole") == "short: kept whole"


def test_cli_wording_names_flags():
    assert cli._cli_wording("pass cast_to_bf16=True (CLI: --cast-bf16) to cast") == "pass --cast-bf16 to cast"
    assert cli._cli_wording("group_size=64 (CLI: --group-size) is") == "--group-size 64 is"


# -- --help --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "eval", "mask", "bench", "compress", "quantize"])
def test_help_shows_each_default_once(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    for chunk in text.split("--")[1:]:  # one option's help each
        assert chunk.count("default") <= 1, chunk


def test_help_says_how_sizes_are_rounded(capsys):
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("rounded, with a note, to the family's rule: 4k+1 for most (18 -> 17, 20 -> 21), LTX-Video 8k+1, "
            "Mochi 6k+1") in text
    assert "rounded down to a multiple of 16, at least 16 (8 -> 16, 70 -> 64)" in text
    assert "--no-sink turn the attention sink off --" in text


def test_rounding_matches_the_help(capsys):
    assert cli._normalise_geometry(18, 8, 70) == (17, 16, 64)
    assert cli._normalise_geometry(20, 16, 16) == (21, 16, 16)
    err = capsys.readouterr().err
    assert "--frames 18 rounded to 17" in err and "--height 8 rounded to 16" in err and "--width 70 rounded to 64" in err


# -- clean output: no torchao unless quantizing --------------------------------------------------------------------


def _tiny_wan_lora(folder: Path) -> Path:
    from diffusers import WanPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from radial_diffusers.tiny import load_tiny

    donor = load_tiny("tiny-wan", 0)
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"])
    donor.transformer.add_adapter(config)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(donor.transformer),
                                  transformer_lora_adapter_metadata=config.to_dict())
    return folder


def test_generate_without_quant_never_imports_torchao(tmp_path):
    """Installed, torchao would be imported by Diffusers and Transformers as they load models, and by PEFT as it adds
    the LoRA; the command line of a run that never quantizes stays free of it and of its warnings."""
    pytest.importorskip("torchao")
    out, lora = tmp_path / "v.mp4", _tiny_wan_lora(tmp_path / "lora")
    code = ("import sys; from radial_diffusers.cli import main; "
            f"sys.argv = ['radial-diffusers', 'generate', *{SMALL!r}, '--lora', {str(lora)!r}, '--out', {str(out)!r}]; "
            "rc = main(); print(rc, sorted(m for m in sys.modules if m == 'torchao' or m.startswith('torchao.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stderr[-2000:]
    assert "torchao" not in proc.stderr and "Failed to load" not in proc.stderr and "_pytree" not in proc.stderr
    assert json.loads(out.with_suffix(".json").read_text())["lora"] == str(lora)


def test_a_quantized_checkpoint_keeps_torchao(tmp_path):
    """A pipeline whose transformer was saved quantized needs torchao to load: torchao is not hidden for it."""
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "x"}}))
    generate = cli.build_parser().parse_args(["generate", "--model", str(tmp_path)])
    assert not cli._never_quantizes(generate)
    assert cli._never_quantizes(cli.build_parser().parse_args(["generate"]))
    assert not cli._never_quantizes(cli.build_parser().parse_args(["generate", "--quant", "int8-weight"]))


def test_quantizing_in_process_still_works_after_a_plain_generate(tmp_path):
    """In-process calls (argv given) never hide torchao: a later --quant run in the same process works."""
    pytest.importorskip("torchao")
    assert main(["generate", *SMALL, "--out", str(tmp_path / "a.mp4")]) == 0
    assert main(["generate", *SMALL, "--quant", "int8-weight", "--out", str(tmp_path / "b.mp4")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["quant"] == "int8-weight"


# -- example and bench scripts -------------------------------------------------------------------------------------


def _scripts() -> list[Path]:
    found = [*sorted((REPO / "examples").rglob("*.py")), *sorted((REPO / "bench").glob("*.py")),
             *sorted((REPO / "bench").glob("*.sh"))]
    return [p for p in found if not p.name.startswith("_")]  # _sizes.py: a helper module


_RUN_HELPS = """
import contextlib, io, json, os, runpy, sys
result = {}
for path in sys.argv[1:]:
    sys.argv, out = [path, "--help"], io.StringIO()
    sys.path.insert(0, os.path.dirname(path))  # as `python path` does: the script's helpers (_sizes)
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = None  # ran to the end: --help was not an option
    except SystemExit as exc:
        code = exc.code
    result[path] = [code, out.getvalue()]
print(json.dumps(result))
"""


def test_every_script_has_a_real_help(tmp_path):
    """``--help`` prints a help and does nothing else (make_demo_clips.py once wrote clips to a folder '--help')."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    scripts = _scripts()
    python = [str(p) for p in scripts if p.suffix == ".py"]
    proc = subprocess.run([sys.executable, "-c", _RUN_HELPS, *python], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # one interpreter: torch and Diffusers are imported once
    assert proc.returncode == 0, proc.stderr[-2000:]
    helps = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in python:
        code, out = helps[path]
        assert code == 0, (path, code)  # None: the script ran to its end, --help was no option
        assert out.startswith("usage:") and len(out.splitlines()) >= 3, (path, out[:200])
    for script in (p for p in scripts if p.suffix == ".sh"):
        shell = subprocess.run(["bash", str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=60)
        assert shell.returncode == 0 and len(shell.stdout.splitlines()) >= 3, (script, shell.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, steps", [("wan_t2v_long_video", 50), ("hunyuan_t2v_long_video", 50),
                                           ("wan_t2v_dfloat11", 50)])
def test_tiny_examples_default_to_a_small_run(script, steps, monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    module = importlib.import_module(script)
    real, tiny = module.parse_args([]), module.parse_args(["--tiny"])
    assert real.steps == steps and tiny.steps <= 8
    assert tiny.height * tiny.width * tiny.frames <= 192 * 192 * 161 < real.height * real.width * real.frames
    assert module.parse_args(["--tiny", "--steps", "3"]).steps == 3


def test_radial_warnings_are_one_line_in_cli_terms(tmp_path, capsys):
    """A setting that leaves radial attention nothing to do runs, and says so in one line (not a Python warning)."""
    assert main(["generate", *SMALL, "--dense-layers", "99", "--out", str(tmp_path / "v.mp4")]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "warning" in x]
    assert line.startswith("radial-diffusers generate: warning: radial attention: dense_layers=99 covers all 2 "
                           "attention layers") and line.endswith("lower dense_layers (CLI: --dense-layers)")
    assert "UserWarning" not in err


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_lora_scale_without_lora_is_refused_before_loading(command, no_loading, tmp_path, capsys):
    out = tmp_path / ("v.mp4" if command == "generate" else "x")
    assert main([command, "--model", "tiny-wan", "--lora-scale", "0.5", "--out", str(out)]) == 2
    assert _one_line_error(capsys, command) == (
        f"radial-diffusers {command}: error: --lora-scale 0.5 sets the strength of a --lora adapter; pass --lora "
        "PATH too, or drop --lora-scale")


def test_a_warning_during_denoising_gets_its_own_line(tmp_path, capsys):
    """Raised inside the denoising loop, the warning clears the progress bar's line instead of continuing it."""
    assert main(["generate", *SMALL, "--steps", "2", "--dense-steps", "2", "--out", str(tmp_path / "v.mp4")]) == 0
    err = capsys.readouterr().err
    start = err.index("radial-diffusers generate: warning: radial attention: dense steps (2 first + 0 last) cover")
    assert start > 0 and err[start - 1] in "\r\n", err[max(0, start - 80):start + 20]


def test_an_empty_output_folder_counts_as_new(tmp_path):
    from radial_diffusers._io import taken

    assert not taken(tmp_path / "new") and not taken(tmp_path)  # tmp_path: empty
    (tmp_path / "f").write_text("x")
    assert taken(tmp_path) and taken(tmp_path / "f")
