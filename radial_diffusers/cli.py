"""The ``radial-diffusers`` command line.

    radial-diffusers generate                       # tiny random Wan2.1, radial attention, no download
    radial-diffusers generate --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --frames 161 --height 480 --width 832
    radial-diffusers mask --model wan --height 768 --width 1280 --frames 69 --json

Subcommands import Diffusers (and everything heavy) only when they run, so ``radial-diffusers --help`` stays fast.
Bad input exits with status 2 and a one-line message (no traceback), as argparse does.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

from ._hub import is_hub_id
from ._io import check_replaceable, taken
from .errors import RadialError, first_sentences
from .families import families as _families
from .families import (TRANSFORMER_ATTRIBUTES, checkpoint_geometry, get_family, get_preset, get_tiny, preset_names,
                       tiny_models)

__all__ = ["main", "build_parser", "CLIError"]

PROG = "radial-diffusers"
DEFAULT_MODEL = "toy-wan"
# The toy model knows only the words of its captions (radial_diffusers/toy/vocab.py); the random tiny-* models any.
DEFAULT_PROMPT = "a yellow square moving right on a striped background"
DEFAULT_OUT = "outputs/video.mp4"
# The demo: the trained toy model at 1.5x the longest length it was trained on (97 frames against 65: 25 latent frames
# x 256 tokens). There the radial mask keeps 40% of the attention blocks (block 64) and a sparse step is measurably
# faster than a dense one on two CPU cores (1.17-1.26x; at 65 frames, density 0.50, 1.03-1.10x), and the model still
# draws the prompt's shape over most of the video (at 129 frames it loses it). About 22 seconds on two CPU cores.
TOY_MODEL = "toy-wan"
TOY_DEFAULTS = {"frames": 97, "height": 64, "width": 64, "steps": 20}
TOY_BLOCK_SIZE = 64
# The random tiny models: a long video (41 latent frames) whose radial mask is genuinely sparse. Real checkpoints
# default to their pipeline's settings.
TINY_DEFAULTS = {"frames": 161, "height": 192, "width": 192, "steps": 8}
REAL_DEFAULTS = {"frames": 81, "height": 480, "width": 832, "steps": 50}
TINY_BLOCK_SIZE = 16
# The preset keeps the first attention layer dense: 1 of 30-40 layers in Wan2.1, but 1 of the 2 in the tiny Wan
# models, which would leave half of their attention dense. Tiny models therefore default to no dense layer (the toy
# model, with 4 layers, keeps the preset).
TINY_DENSE_LAYERS = 0
VAE_TILING_MIN_FRAMES = 81  # "auto" tiles the VAE above this many frames (real checkpoints only)
FRAMES_RULE = ("frames; others are rounded, with a note, to the family's rule: 4k+1 for most (18 -> 17, 20 -> 21), "
               "LTX-Video 8k+1, Mochi 6k+1 (a model whose family its name does not tell: its pipeline's rule is "
               "checked once loaded, naming the values that work)")
SIDE_RULE = "rounded down to a multiple of 16, at least 16 (8 -> 16, 70 -> 64) with a note"


class CLIError(RadialError):
    """A user error found by the CLI itself; like every :class:`~radial_diffusers.errors.RadialError` it is printed as
    ``radial-diffusers <cmd>: error: <message>``, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where it tells something: not when the help already states its default, not for a
    ``None`` default (the help says what happens then) and not for on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return text + " (default: %(default)s)"


# -- argument types ----------------------------------------------------------------------------------------------


def _number(kind: type, minimum: float, strict: bool):
    """An argparse ``type``: parse ``kind`` (int or float), finite, ``> minimum`` if ``strict`` else ``>= minimum``."""
    what = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ((value > minimum if strict else value >= minimum) and value != float("inf")):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


_positive_int = _number(int, 0, strict=True)
_nonneg_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)
_nonneg_float = _number(float, 0, strict=False)


def _steps_value(text: str) -> int | float:
    """``"2"`` -> 2 steps; ``"0.24"`` -> a fraction of the schedule."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an int (steps) or a fraction in [0, 1] of the schedule, got {text!r}"
            ) from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"a fraction of the schedule must lie in [0, 1], got {text}; give an int for a number of steps"
            )
        return value
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# -- parser --------------------------------------------------------------------------------------------------------


def _add_mask_options(p: argparse.ArgumentParser, *, block_default_help: str) -> None:
    p.add_argument("--block-size", type=_positive_int, default=None,
                   help=f"mask/kernel block in tokens, a power of two >= 16 ({block_default_help})")
    p.add_argument("--decay-factor", type=_positive_float, default=None,
                   help="band-width decay for frames >= 2 apart (default: the family's preset: Wan 0.2, HunyuanVideo "
                   "0.95, Wan2.2 0.8, the others 1.0)")
    p.add_argument("--adjacent", choices=("full", "half"), default="full",
                   help="Wan neighbour-frame band: full frame (official HEAD) or half (releases before 2025-11-11)")
    p.add_argument("--sink", dest="sink", action="store_true", default=None,
                   help="key frame 0 visible to every query (default: the family's; Wan, LTX-Video on, HunyuanVideo "
                        "off; see `mask --json`)")
    p.add_argument("--no-sink", dest="sink", action="store_false", help="turn the attention sink off")


def _add_model_out_options(p: argparse.ArgumentParser) -> None:
    """MODEL, OUT, --subfolder and --overwrite of the subcommands that turn a model into a folder."""
    p.add_argument("model", help=f"a local model or pipeline folder, a Hub id, or one of {', '.join(tiny_models())}")
    p.add_argument("out", help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--subfolder", default=None, help="model subfolder in a pipeline (default: transformer)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``generate`` and ``eval`` share: the model, the call's geometry, steps and guidance, the radial
    config, the device and dtype."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local pipeline directory, or one of {', '.join(tiny_models())} (built offline; "
                   f"{TOY_MODEL} is the trained toy model)")
    p.add_argument("--revision", default=None,
                   help="a branch, tag or commit of the hub id (e.g. Cosmos-Predict2.5's diffusers/base/post-trained)")
    def defaults(key: str) -> str:
        return (f"(default: {TOY_MODEL} {TOY_DEFAULTS[key]}, tiny {TINY_DEFAULTS[key]}, "
                f"else {REAL_DEFAULTS[key]})")

    p.add_argument("--frames", type=_positive_int, default=None, help=f"{FRAMES_RULE} {defaults('frames')}")
    p.add_argument("--height", type=_positive_int, default=None, help=f"pixels, {SIDE_RULE} {defaults('height')}")
    p.add_argument("--width", type=_positive_int, default=None, help=f"pixels, {SIDE_RULE} {defaults('width')}")
    p.add_argument("--steps", type=_positive_int, default=None, help=f"denoising steps {defaults('steps')}")
    p.add_argument("--guidance-scale", type=_nonneg_float, default=None,
                   help="guidance scale (default: the pipeline's; HunyuanVideo: embedded guidance)")
    p.add_argument("--flow-shift", type=_positive_float, default=None,
                   help="scheduler shift (FlowMatch 'shift' or UniPC 'flow_shift'; default: the scheduler's)")
    p.add_argument("--dense-layers", type=_nonneg_int, default=None,
                   help=f"first N attention layers stay dense (default: tiny-* models {TINY_DENSE_LAYERS}, else the "
                   "family's preset: 1, HunyuanVideo / HunyuanVideo-1.5 / Mochi 0)")
    p.add_argument("--dense-steps", type=_steps_value, default=None,
                   help="first denoising steps stay dense: an int, or a fraction like 0.24 (default: the family's "
                        "preset: 0.24, Wan2.2 0.275, Mochi 0.1875)")
    p.add_argument("--last-dense-steps", type=_steps_value, default=0,
                   help="last denoising steps stay dense (int or fraction)")
    _add_mask_options(p, block_default_help=f"default {TOY_BLOCK_SIZE} for {TOY_MODEL}, {TINY_BLOCK_SIZE} for tiny-* "
                      "models, else the model's preset: 128, Wan2.2 A14B 64")
    p.add_argument("--backend", choices=("auto", "torch", "triton", "flex"), default="auto",
                   help="block-sparse attention backend for sparse steps: auto = triton on CUDA, torch on the CPU; "
                   "triton and flex need CUDA (triton runs on the CPU under TRITON_INTERPRET=1, slowly)")
    p.add_argument("--attention-precision", choices=("fp8",), default=None,
                   help="fp8: sparse steps compute QK^T in float8 e4m3 (per-block scales, smoothed K; P @ V in the "
                   "model's dtype), on --backend triton/auto with a bfloat16/float16 model on a GPU of compute "
                   "capability 8.9 or 9.0 (default: the model's dtype)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Radial Attention (O(n log n) block-sparse attention) for long-video generation with Diffusers.",
    )
    try:
        from . import __version__
    except Exception:  # pragma: no cover
        __version__ = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser(
        "generate",
        help="generate a video with radial (or dense) attention",
        description="Generate a video with a pipeline of a supported family ("
        + ", ".join(f.label for f in _families()) + "; text- or image-to-video) and radial attention. Writes "
        "VIDEO.mp4, VIDEO.mask.png (radial only) and a VIDEO.json run report. The default runs the toy model "
        "shipped with the package (toy-wan, trained here; no download): 97 frames at 64x64, 1.5x the longest clips "
        "it was trained on.",
        formatter_class=_HelpFormatter,
    )
    _add_run_options(g)
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default: the pipeline's)")
    g.add_argument("--image", default=None, help="first-frame image (image-to-video models only, required there)")
    g.add_argument("--true-cfg-scale", type=_nonneg_float, default=None,
                   help="HunyuanVideo only: real classifier-free guidance with --negative-prompt (> 1 enables it)")
    g.add_argument("--attention", choices=("radial", "dense"), default="radial",
                   help="radial (default) or the model's stock dense attention (the radial options are then unused)")
    g.add_argument("--compare", choices=("dense",), default=None,
                   help="also generate the same seed with dense attention: writes VIDEO.dense.mp4 and prints both "
                   "step times and the PSNR / SSIM of the radial video against the dense one")
    g.add_argument("--dfloat11", default=None, metavar="PATH",
                   help="DFloat11 checkpoint of the transformer (directory, .safetensors file or Hub id; from "
                   "`radial-diffusers compress` or an official DF11 release): lossless BF16, decoded per block")
    g.add_argument("--quant", default=None, metavar="SCHEME",
                   help="quantize the transformer (each expert of Wan2.2 A14B) with torchao: int8-weight, "
                   "int8-dynamic, fp8-weight, fp8-dynamic (CUDA SM>=8.9), int4-weight (CUDA), int4-weight-cpu")
    g.add_argument("--group-size", type=_positive_int, default=128, help="group size of the int4 schemes")
    g.add_argument("--lora", default=None, metavar="PATH", help="LoRA weights (Diffusers/PEFT safetensors)")
    g.add_argument("--lora-scale", type=float, default=None, help="strength of the --lora adapter (default 1.0)")
    g.add_argument("--offload", choices=("model", "group"), default=None,
                   help="model: pipe.enable_model_cpu_offload() (needs an accelerator); group: block-level group "
                   "offloading of the transformer")
    g.add_argument("--vae-tiling", choices=("auto", "on", "off"), default="auto",
                   help=f"auto: tile the VAE of real checkpoints above {VAE_TILING_MIN_FRAMES} frames")
    g.add_argument("--ulysses", type=_positive_int, default=1,
                   help="context parallelism: Ulysses degree (heads split over the processes); run under torchrun "
                   "--nproc-per-node ULYSSES*RING; rank 0 writes the files")
    g.add_argument("--ring", type=_positive_int, default=1,
                   help="context parallelism: ring degree (key/value chunks passed around the processes)")
    g.add_argument("--fps", type=_positive_int, default=None,
                   help="frames per second of the video (default: the family's: Wan 16, HunyuanVideo and LTX 24, "
                   "CogVideoX 8, Mochi 30); a pipeline that conditions on it (LTX-Video, LTX-2: frame_rate; "
                   "SkyReels-V2 diffusion forcing: fps) generates for it")
    g.add_argument("--out", default=DEFAULT_OUT, help="output .mp4; the mask PNG and JSON report go next to it")
    g.set_defaults(func=_cmd_generate)

    e = sub.add_parser(
        "eval",
        help="radial vs dense on the same prompts and seeds: PSNR / SSIM, attention recall, step times; HTML report",
        description="Generate every prompt and seed with dense attention and with radial attention (and optionally "
        "radial + a LoRA, + DFloat11, + quantization schemes, + the config --suggest proposes), then measure each "
        "video against the dense one (PSNR, SSIM per frame), the attention recall of the radial mask per layer and "
        "step (on sampled query rows of the real q and k) and the step time of each variant in this run. Writes "
        "OUT/index.html (opens from disk, no network), OUT/report.json, the side-by-side videos and pictures.",
        formatter_class=_HelpFormatter,
    )
    _add_run_options(e)
    e.add_argument("--prompt", action="append", default=None, metavar="PROMPT",
                   help=f"a prompt (repeat for several; default: {DEFAULT_PROMPT!r})")
    e.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="generation seeds (every prompt runs with each)")
    e.add_argument("--image", default=None,
                   help="first-frame image (image-to-video models only, required there): every sample starts from it")
    e.add_argument("--lora", default=None, metavar="PATH", help="add a radial + LoRA variant with these weights")
    e.add_argument("--lora-scale", type=float, default=None, help="strength of the --lora adapter (default 1.0)")
    e.add_argument("--dfloat11", nargs="?", const=True, default=None, metavar="PATH",
                   help="add a radial + DFloat11 variant: the transformer compressed in memory, or with PATH that DF11 "
                   "checkpoint of it loaded (folder, .safetensors file or Hub id; from `radial-diffusers compress` or "
                   "an official DF11 release); needs BF16 weights (--dtype bfloat16); it must equal radial bit for "
                   "bit")
    e.add_argument("--quant", nargs="+", default=[], metavar="SCHEME",
                   help="add a radial + quantization variant per scheme (int8-weight, int8-dynamic, fp8-weight, "
                   "fp8-dynamic, int4-weight, int4-weight-cpu); one the device cannot run is reported as failed")
    e.add_argument("--suggest", action="store_true",
                   help="first measure recall along the dense trajectory and propose dense layers / dense steps / "
                   "decay (printed), then evaluate that config too, as the variant 'suggested'")
    e.add_argument("--min-recall", type=_positive_float, default=0.9, help="the recall --suggest aims for")
    e.add_argument("--recall-rows", type=_nonneg_int, default=64,
                   help="query rows sampled per attention call for the recall (0: no recall pass)")
    e.add_argument("--out", default="outputs/eval",
                   help="report folder (must not exist or be empty, unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("--fps", type=_positive_int, default=None,
                   help="default: the family's (Wan 16); a pipeline that conditions on it (LTX-Video, LTX-2: "
                   "frame_rate) generates for it")
    e.set_defaults(func=_cmd_eval)

    m = sub.add_parser(
        "mask",
        help="print the radial mask's density, FLOPs saved and speedup bound for a geometry; --out: its picture",
        description="Build the radial block mask of a geometry of any registered family (--model; no model needed): "
        "prints the latent geometry, density, attention FLOPs saved and the speedup bound; with --out, also saves a "
        "picture of the mask (frame grid, attention sink and text regions, title, legend).",
        formatter_class=_HelpFormatter,
    )
    m.add_argument("--model", type=_preset_of, choices=preset_names(), default="wan",
                   help="model family or variant (mask rule and preset), or a Diffusers checkpoint the registry "
                   "lists (Wan-AI/Wan2.2-TI2V-5B-Diffusers: wan2.2-ti2v)")
    m.add_argument("--height", type=_positive_int, default=768, help=f"pixels, {SIDE_RULE}")
    m.add_argument("--width", type=_positive_int, default=1280, help=f"pixels, {SIDE_RULE}")
    m.add_argument("--frames", type=_positive_int, default=69, help=FRAMES_RULE)
    _add_mask_options(m, block_default_help="default: the model's preset, 128 (Wan2.2 A14B: 64)")
    m.add_argument("--text-tokens", type=_nonneg_int, default=None,
                   help="text tokens in the joint sequence (default: the family's; Wan and LTX-Video 0, HunyuanVideo "
                        "and Mochi 256, CogVideoX 226, HunyuanVideo-1.5 1985)")
    m.add_argument("--head-dim", type=_positive_int, default=128, help="head dimension for the FLOP counts")
    m.add_argument("--out", default=None, metavar="PNG",
                   help="write a picture of the mask there (frame grid, sink and text regions, density); without "
                   "it no file is written")
    m.add_argument("--json", action="store_true", help="print the stats as JSON")
    m.set_defaults(func=_cmd_mask)

    b = sub.add_parser(
        "bench",
        help="time radial attention against dense attention at a model's geometry on this device",
        description="Time one attention call at a model's video geometry on this device: dense attention (PyTorch "
        "SDPA, the stock processors' path) and radial block-sparse attention (our Triton kernel on CUDA, the PyTorch "
        "path on the CPU), on the same random inputs in one run; prints the milliseconds, TFLOP/s (radial: per "
        "computed block) and the speedup over dense next to the mask's bound. The first call of each row is a "
        "warm-up (Triton compiles and tunes there), then the median of --repeats calls counts. No model is loaded.",
        formatter_class=_HelpFormatter,
    )
    b.add_argument("--model", type=_preset_of, choices=preset_names(), default="wan",
                   help="model family or variant (mask rule, preset, VAE and patch), or a Diffusers checkpoint the "
                   "registry lists (Lightricks/LTX-2: ltx2)")
    b.add_argument("--height", type=_positive_int, default=None,
                   help=f"pixels, {SIDE_RULE} (default: 768 on CUDA, 480 on the CPU)")
    b.add_argument("--width", type=_positive_int, default=None,
                   help=f"pixels, {SIDE_RULE} (default: 1280 on CUDA, 832 on the CPU)")
    b.add_argument("--frames", type=_positive_int, default=None,
                   help=f"{FRAMES_RULE} (default: 69 on CUDA, 33 on the CPU)")
    _add_mask_options(b, block_default_help="default: the model's preset, 128 (Wan2.2 A14B: 64)")
    b.add_argument("--text-tokens", type=_nonneg_int, default=None,
                   help="text tokens in the joint sequence (default: the family's, as `mask`)")
    b.add_argument("--heads", type=_positive_int, default=None,
                   help="attention heads (default: 12 on CUDA, as Wan2.1-1.3B; 1 on the CPU)")
    b.add_argument("--head-dim", type=_positive_int, default=128, help="head dimension")
    b.add_argument("--batch", type=_positive_int, default=1, help="batch size (a CFG pass of two prompts: 2)")
    b.add_argument("--backend", choices=("auto", "torch", "triton", "flex"), default="auto",
                   help="the radial row's backend: auto = triton on CUDA, torch on the CPU")
    b.add_argument("--flex", action="store_true", help="add a row for FlexAttention on the same layout (CUDA)")
    b.add_argument("--attention-precision", choices=("fp8",), default=None,
                   help="add a row for FP8 attention (QK^T in fp8 e4m3, P V in the input dtype; CUDA compute "
                   "capability 8.9 or 9.0)")
    b.add_argument("--backward", action="store_true", help="also time forward + backward (training)")
    b.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed calls per row after the warm-up, median reported (default: 10 on CUDA, 3 on the CPU)")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on CUDA")
    b.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser(
        "compress",
        help="losslessly compress a transformer's BF16 block weights to DFloat11 (about 68%% of the size on "
        "trained weights)",
        description="Compress the transformer blocks of a model of any registered family (or any model with --pattern) "
        "to DFloat11 and write the official DF11 directory layout. A saved model is streamed block by block from "
        "its safetensors shards (bounded memory). Load the result with `generate --dfloat11 OUT` or "
        "radial_diffusers.dfloat11.load_dfloat11.",
        formatter_class=_HelpFormatter,
    )
    _add_model_out_options(c)
    c.add_argument("--cast-bf16", action="store_true",
                   help="cast FP16/FP32 weights to BF16 first (lossless relative to that cast); without it a "
                   "non-BF16 weight is an error")
    c.add_argument("--workers", type=_positive_int, default=None, help="parallel encoding threads (default min(4, CPUs))")
    c.add_argument("--pattern", default=None,
                   help='JSON {"module regex": ["linear path", ...]} or a .json file with it (default: the '
                   "model family's blocks, every Linear its registry entry lists)")
    c.add_argument("--no-verify", action="store_true", help="skip the bit-exact decode check of every block")
    c.add_argument("--variant", default=None,
                   help="compress the weights of this variant (e.g. fp16: diffusion_pytorch_model.fp16.safetensors), "
                   "as from_pretrained(variant=...) reads them")
    c.set_defaults(func=_cmd_compress)

    q = sub.add_parser(
        "quantize",
        help="save a torchao-quantized transformer (reloads with from_pretrained)",
        description="Quantize the transformer of a model of any registered family with torchao while loading it "
        "(the BF16 weights are never all materialised) and save it; reload with <ModelClass>.from_pretrained(OUT).",
        formatter_class=_HelpFormatter,
    )
    _add_model_out_options(q)
    q.add_argument("--scheme", required=True,
                   help="int8-weight, int8-dynamic, fp8-weight, fp8-dynamic, int4-weight, int4-weight-cpu")
    q.add_argument("--group-size", type=_positive_int, default=128, help="group size of the int4 schemes")
    q.add_argument("--device", default=None, help="where the model will run (default: cuda if available)")
    q.set_defaults(func=_cmd_quantize)

    t = sub.add_parser(
        "train",
        help="LoRA length-extension fine-tuning with radial attention (YAML/JSON config)",
        description="Fine-tune a LoRA that adapts a video model (Wan, HunyuanVideo, ...) to longer videos, with radial "
        "attention in the training step. Encodes the clips once into a cache, then trains; checkpoints resume exactly "
        "(stop early with --stop-at N, not a smaller max_steps). Multi-GPU: accelerate launch --multi_gpu -m "
        "lora_training.train CONFIG.",
    )
    from lora_training.config import add_cli_arguments  # torch-free: --help stays fast

    add_cli_arguments(t)
    t.set_defaults(func=_cmd_train)
    return parser


# -- shared helpers ------------------------------------------------------------------------------------------------


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# Library messages name a Python argument and its flag: "pass cast_to_bf16=True (CLI: --cast-bf16)".
_PYTHON_ARGUMENT = re.compile(r"\b\w+=(\S+?) \(CLI: (--[\w-]+)\)")


def _cli_wording(message: str) -> str:
    """A library message as the CLI says it: ``group_size=128 (CLI: --group-size)`` becomes ``--group-size 128``,
    ``cast_to_bf16=True (CLI: --cast-bf16)`` becomes ``--cast-bf16``."""
    return _PYTHON_ARGUMENT.sub(lambda m: m[2] if m[1] == "True" else f"{m[2]} {m[1]}", message)


def _normalise_geometry(frames: int, height: int, width: int, *, quiet: bool = False, temporal: int | None = 4,
                        side: int = 16) -> tuple[int, int, int]:
    """Frames to ``temporal * k + 1`` (``temporal=None``: as given) and height/width down to multiples of ``side``
    (at least ``side``), as the pipelines require (Wan, HunyuanVideo, CogVideoX: 4 and 16; LTX-Video 8 and 32;
    Mochi 6 and 16)."""
    f = frames if temporal is None or frames % temporal == 1 else frames // temporal * temporal + 1
    h, w = max(side, height // side * side), max(side, width // side * side)
    if not quiet:
        for name, old, new, rule in (("frames", frames, f, f"{temporal}k+1"),
                                     ("height", height, h, f"a multiple of {side}"),
                                     ("width", width, w, f"a multiple of {side}")):
            if old != new:
                _note(f"note: --{name} {old} rounded to {new} ({rule})")
    return f, h, w


def _radial_config(args, model: str, *, num_steps: int | None = None):
    from .config import RadialConfig

    try:
        return RadialConfig(
            dense_layers=getattr(args, "dense_layers", None),
            dense_steps=getattr(args, "dense_steps", None),
            last_dense_steps=getattr(args, "last_dense_steps", 0),
            decay_factor=args.decay_factor,
            block_size=args.block_size,
            adjacent=args.adjacent,
            sink=args.sink,
            backend=getattr(args, "backend", "auto"),
            num_inference_steps=num_steps,
            attention_precision=getattr(args, "attention_precision", None),
        ).with_preset(model)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _stats_dict(stats) -> dict:
    return {
        "n_blocks": stats.n_blocks,
        "kept_blocks": stats.kept_blocks,
        "density": stats.density,
        "sparsity": 1.0 - stats.density,
        "flops_saved": stats.flops_saved,
        "speedup_bound": stats.speedup_bound,
    }


# -- mask ----------------------------------------------------------------------------------------------------------


def _check_writable(path: str | Path, flag: str) -> Path:
    """:func:`radial_diffusers._io.check_writable` with its error as a :class:`CLIError`."""
    from ._io import NotWritableError, check_writable

    try:
        return check_writable(path, flag)
    except NotWritableError as exc:
        raise CLIError(str(exc)) from None


def _check_mask_rows(mask, block_size: int, tokens_per_frame: int) -> None:
    """Refuse a mask in which some query block keeps no key block: its tokens would attend to nothing."""
    empty = int((~mask.any(dim=1)).sum())
    if empty:
        raise CLIError(
            f"the radial mask keeps no key block for {empty} of its {mask.shape[0]} query blocks (their tokens would "
            f"attend to nothing) at {tokens_per_frame} tokens per latent frame with --block-size {block_size}; use a "
            "smaller --block-size, a larger --height/--width, or --attention dense"
        )


def _save_mask_picture(mask, path: Path, *, model: str, geometry: tuple[int, int, int], text_tokens: int, cfg,
                       title: str, stats) -> Path:
    from .mask_image import MaskPictureInfo, save_mask_picture

    info = MaskPictureInfo.of_radial(
        cfg, geometry, text_tokens=text_tokens, text_first=get_family(model).text_position == "before", title=title,
        extra=(f"{model}: decay {cfg.decay_factor}, adjacent {cfg.adjacent}, sink {'on' if cfg.sink else 'off'}; "
               f"attention FLOPs saved {100 * stats.flops_saved:.1f}%, speedup bound {stats.speedup_bound:.2f}x",),
    )
    return save_mask_picture(mask, path, info)


def _mask_geometry(args) -> argparse.Namespace:
    """The radial mask of the geometry the ``mask`` / ``bench`` options describe (``--model``, ``--height``,
    ``--width``, ``--frames``, ``--text-tokens`` and the mask options): ``family``, ``cfg``, the rounded ``frames`` /
    ``height`` / ``width``, ``latent_frames``, ``hp`` x ``wp`` = ``tpf`` tokens per frame, ``text_tokens``,
    ``seq_len`` and the ``(n, n)`` bool ``mask``."""
    from .masks import radial_block_mask
    from .pipelines import token_frames

    family, _ = get_preset(args.model)  # a family ("wan") or a variant ("wan2.2"): the mask rule is the family's
    vae_t, vae_s, (pt, ph, pw) = checkpoint_geometry(args.model)  # the VAE and patch: the variant's (TI2V-5B: 16x)
    frames, height, width = _normalise_geometry(args.frames, args.height, args.width, temporal=vae_t,
                                                side=vae_s * ph)
    cfg = _radial_config(args, args.model)  # no --block-size: the preset's
    text_tokens = args.text_tokens if args.text_tokens is not None else family.mask_text_tokens
    latent_frames = token_frames(frames, vae_t, pt)
    hp, wp = height // (vae_s * ph), width // (vae_s * pw)
    tpf = hp * wp
    try:
        mask = radial_block_mask(
            latent_frames, tpf, model=family.name, block_size=cfg.block_size, decay_factor=cfg.decay_factor,
            text_tokens=text_tokens, adjacent=cfg.adjacent, sink=cfg.sink,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _check_mask_rows(mask, cfg.block_size, tpf)
    return argparse.Namespace(family=family, cfg=cfg, frames=frames, height=height, width=width,
                              latent_frames=latent_frames, hp=hp, wp=wp, tpf=tpf, text_tokens=text_tokens,
                              seq_len=latent_frames * tpf + text_tokens, mask=mask)


def _preset_of(value: str) -> str:
    """``mask`` / ``bench --model``: a family or variant name as given, or the preset of a Diffusers checkpoint id
    the registry lists (a variant's ids first: ``Wan-AI/Wan2.2-T2V-A14B-Diffusers`` is ``wan2.2``). Anything else is
    returned as is, for argparse's choices to refuse with the valid names."""
    from .families import families

    def listed(ids) -> bool:  # Hub ids resolve case-insensitively
        return value.casefold() in {i.casefold() for i in ids}

    for family in families():
        for variant in family.variants:
            if listed(variant.hub_ids):
                return variant.name
    return next((family.name for family in families() if listed(family.hub_ids)), value)


def _cmd_mask(args) -> int:
    from dataclasses import asdict

    from .masks import mask_stats

    png = None
    if args.out is not None:
        png = Path(args.out)
        if png.suffix.lower() != ".png":
            raise CLIError(f"--out must be a .png path, got {args.out!r}")
        _check_writable(png, "--out")
    g = _mask_geometry(args)
    family, cfg, mask, text_tokens, seq_len = g.family, g.cfg, g.mask, g.text_tokens, g.seq_len
    frames, height, width, latent_frames, hp, wp, tpf = g.frames, g.height, g.width, g.latent_frames, g.hp, g.wp, g.tpf
    stats = mask_stats(mask, cfg.block_size, seq_len, args.head_dim)
    if png is not None:
        _save_mask_picture(mask, png, model=family.name, geometry=(latent_frames, hp, wp), text_tokens=text_tokens,
                           cfg=cfg, title=f"radial mask: {args.model} {height}x{width}x{frames}", stats=stats)
    report = {
        "model": args.model,
        "frames": frames,
        "height": height,
        "width": width,
        "latent_geometry": [latent_frames, hp, wp],
        "tokens_per_frame": tpf,
        "text_tokens": text_tokens,
        "seq_len": seq_len,
        "block_size": cfg.block_size,
        **_stats_dict(stats),
        "head_dim": args.head_dim,
        "dense_tflops": stats.dense_flops / 1e12,
        "sparse_tflops": stats.sparse_flops / 1e12,
        "config": {k: v for k, v in asdict(cfg).items() if k in ("block_size", "decay_factor", "adjacent", "sink")},
        "png": str(png) if png else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model} {height}x{width}x{frames}: latent F'={latent_frames}, {hp}x{wp} = {tpf} tokens per frame, "
          f"{text_tokens} text tokens, seq_len {seq_len}")
    print(f"block {cfg.block_size}: {stats.n_blocks} x {stats.n_blocks} blocks, {stats.kept_blocks} kept "
          f"(decay {cfg.decay_factor}, adjacent {cfg.adjacent}, sink {'on' if cfg.sink else 'off'})")
    print(f"density {stats.density:.7f} (sparsity {1 - stats.density:.7f}), attention FLOPs saved "
          f"{100 * stats.flops_saved:.2f}%, speedup bound {stats.speedup_bound:.2f}x "
          f"(per head, head_dim {args.head_dim}: {stats.dense_flops / 1e12:.3f} -> {stats.sparse_flops / 1e12:.3f} "
          "TFLOPs)")
    print(f"mask picture saved to {png}" if png else "(--out MASK.png saves a picture of the mask)")
    return 0


# -- bench ---------------------------------------------------------------------------------------------------------

# Defaults per device: on CUDA the geometry of `mask` (Wan2.1-14B's 768x1280x69) with Wan2.1-1.3B's 12 heads; on the
# CPU a Wan2.1-1.3B-sized 480x832x33 clip and one head, so that dense attention takes about a second a call.
_BENCH_DEFAULTS = {"cuda": dict(height=768, width=1280, frames=69, heads=12, repeats=10),
                   "cpu": dict(height=480, width=832, frames=33, heads=1, repeats=3)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _cmd_bench(args) -> int:
    import torch

    from .evaluation.attention_speed import time_attention
    from .layout import BlockLayout
    from .masks import mask_stats

    device, dtype_name = _device_dtype(args)
    defaults = _BENCH_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.backend != "auto":
        _check_backend(args.backend, device)
    if args.flex and device.type != "cuda":
        raise CLIError(f"--flex times compiled FlexAttention, which needs CUDA for the log-sum-exp the op returns, and "
                       f"this run is on {device}; drop --flex")
    _check_precision(args.attention_precision, args.backend, device, dtype_name)
    g = _mask_geometry(args)
    stats = mask_stats(g.mask, g.cfg.block_size, g.seq_len, args.head_dim)
    layout = BlockLayout.from_block_mask(g.mask, g.cfg.block_size, g.seq_len)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    header = (f"{args.model} {g.height}x{g.width}x{g.frames}: latent {g.latent_frames}x{g.hp}x{g.wp}, {g.seq_len} "
              f"tokens ({g.text_tokens} text), block {g.cfg.block_size}: density {stats.density:.3f}, speedup bound "
              f"{stats.speedup_bound:.2f}x; {args.batch} x {args.heads} heads x {args.head_dim}, {device} {dtype_name} "
              f"({where}), median of {args.repeats} calls after a warm-up")
    if not args.json:
        print(f"{PROG} bench: {header}", flush=True)
    rows = time_attention(layout, heads=args.heads, head_dim=args.head_dim, dtype=getattr(torch, dtype_name),
                          device=device, batch=args.batch, backend=args.backend, backward=args.backward,
                          flex=args.flex, fp8=args.attention_precision == "fp8", repeats=args.repeats)
    dense = rows[0]
    if args.json:
        print(json.dumps({
            "model": args.model, "frames": g.frames, "height": g.height, "width": g.width,
            "latent_geometry": [g.latent_frames, g.hp, g.wp], "text_tokens": g.text_tokens, "seq_len": g.seq_len,
            "block_size": g.cfg.block_size, **_stats_dict(stats), "batch": args.batch, "heads": args.heads,
            "head_dim": args.head_dim, "device": str(device), "device_name": where, "dtype": dtype_name,
            "repeats": args.repeats,
            "rows": [{"name": r.name, "forward_ms": r.forward_ms, "forward_tflops": r.tflops,
                      "forward_speedup": dense.forward_ms / r.forward_ms, "backward_ms": r.backward_ms,
                      "backward_tflops": r.backward_tflops,
                      "backward_speedup": _ratio(dense.backward_ms, r.backward_ms)}
                     for r in rows],
        }, indent=2))
        return 0
    wide = max(len(r.name) for r in rows)
    title = f"{'attention':{wide}s} {'fwd ms':>9s} {'TFLOP/s':>8s} {'vs dense':>8s}"
    print(title + (f" {'fwd+bwd ms':>11s} {'TFLOP/s':>8s} {'vs dense':>8s}" if args.backward else ""))
    for r in rows:
        line = f"{r.name:{wide}s} {r.forward_ms:9.2f} {r.tflops:8.2f} {dense.forward_ms / r.forward_ms:7.2f}x"
        if args.backward and r.backward_ms is None:  # FP8: inference only; flex trains 128-token blocks only
            line += f" {'-':>11s} {'-':>8s} {'-':>8s}"
        elif args.backward:
            line += f" {r.backward_ms:11.2f} {r.backward_tflops:8.2f} {dense.backward_ms / r.backward_ms:7.2f}x"
        print(line)
    print("TFLOP/s: of the attention each row computes (radial: the kept blocks); the speedup bound is dense / kept "
          "FLOPs")
    return 0


# -- generate ------------------------------------------------------------------------------------------------------


def _check_model_name(name: str) -> str:
    """``"tiny"``, ``"local"`` or ``"hub"`` (:func:`radial_diffusers.pipelines.model_source`)."""
    from .pipelines import model_source

    return model_source(name)


def _load_pipeline(name: str, dtype, dfloat11: str | None = None, revision: str | None = None):
    """The pipeline (tiny models: weights from a fixed seed, so the "model" does not change with --seed); with
    ``dfloat11`` its transformer holds those DF11 weights and the original transformer weights are never read;
    ``revision``: of a Hub id."""
    from .errors import ModelLoadError
    from .pipelines import load_pipeline

    try:
        return load_pipeline(name, dtype, dfloat11=dfloat11, seed=0, revision=revision)
    except ModelLoadError as exc:
        message = str(exc)
        if dfloat11 is not None and message.startswith(f"DF11 checkpoint {dfloat11}: "):
            message = f"--dfloat11 {dfloat11}: " + message.removeprefix(f"DF11 checkpoint {dfloat11}: ")
        if revision is not None and message.startswith("revision "):
            message = "--" + message
        raise CLIError(message) from None


def _readable(pipe, args):
    """The loaded pipeline, or the class of the same components whose calls radial attention can read (LTX-Video
    0.9.7 loads as ``LTXConditionPipeline``: :func:`~radial_diffusers.pipelines.readable_pipeline`), with a note; with
    ``--image``, a text-to-video pipeline whose checkpoint serves both tasks runs as its image-to-video pipeline
    (``Lightricks/LTX-2`` loads as ``LTX2Pipeline``: :func:`~radial_diffusers.pipelines.image_to_video_pipeline`)."""
    from .pipelines import image_to_video_pipeline, is_image_to_video, readable_pipeline

    readable = readable_pipeline(pipe, image_to_video=args.image is not None)
    if readable is not pipe:
        _note(f"note: {args.model} loads as {type(pipe).__name__}, which does not pass its transformer the latent "
              f"grid that radial attention needs; it runs as {type(readable).__name__} (the same components; that "
              f"pipeline's sampling schedule, no conditioning inputs)")
    elif args.image is not None and not is_image_to_video(pipe):
        twin = image_to_video_pipeline(pipe)
        if twin is not None:
            _note(f"note: {args.model} loads as {type(pipe).__name__}; with --image it runs as "
                  f"{type(twin).__name__} (the same components)")
            return twin
    return readable


def _quantize_transformer(pipe, scheme: str, group_size: int, device) -> None:
    """Quantize the pipeline's transformers in memory (each expert of Wan2.2 A14B), moved to ``device`` first, where
    they will run."""
    from .pipelines import experts
    from .quant import quantize

    for transformer in experts(pipe).values():
        transformer.to(device)
        try:
            quantize(transformer, scheme, group_size=group_size)
        except (ValueError, ImportError) as exc:
            raise CLIError(f"--quant {scheme}: {exc}") from None


def _shift_key(scheduler) -> str | None:
    """The scheduler's flow-shift setting: UniPC's ``flow_shift``, FlowMatch's ``shift`` (``None``: neither)."""
    return next((key for key in ("flow_shift", "shift") if key in scheduler.config), None)


def _set_flow_shift(pipe, shift: float) -> None:
    scheduler = pipe.scheduler
    key = _shift_key(scheduler)
    if key is None:
        raise CLIError(f"--flow-shift: the scheduler {type(scheduler).__name__} has no shift / flow_shift setting")
    extra = {}
    if scheduler.config.get("use_dynamic_shifting"):  # it would ignore the shift for one from the token count
        extra["use_dynamic_shifting"] = False
        _note(f"note: --flow-shift {shift:g} replaces {type(scheduler).__name__}'s shift by sequence length "
              "(use_dynamic_shifting) with that fixed shift")
    pipe.scheduler = type(scheduler).from_config(scheduler.config, **{key: shift}, **extra)


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise CLIError(f"--image {path}: cannot read the image ({exc})") from None


def _write_video(frames, path: Path, fps: int, audio=None) -> None:
    """The mp4; ``audio``: ``(waveform (channels, samples), sample rate)`` to mux in (LTX-2), or ``None``."""
    from ._io import export_video

    export_video(frames, path, fps, *(audio or ()))


def _audio_of(result, pipe):
    """``(waveform (channels, samples), sample rate)`` of an audio-video pipeline's first sample (LTX-2: ``.audio``,
    at its vocoder's output rate), else ``None``; a waveform whose rate the pipeline does not say is left out with a
    note."""
    audio = getattr(result, "audio", None)
    if audio is None or audio[0].numel() == 0:
        return None
    rate = getattr(getattr(getattr(pipe, "vocoder", None), "config", None), "output_sampling_rate", None)
    if not rate:
        _note(f"note: {type(pipe).__name__} returned audio but no sample rate (vocoder.config.output_sampling_rate); "
              "the video is written without it")
        return None
    return audio[0], int(rate)


def _check_precision(precision: str | None, backend: str, device, dtype_name: str) -> None:
    """Refuse, before anything loads, fp8 attention where it cannot run."""
    if precision != "fp8":
        return
    if backend not in ("auto", "triton"):
        raise CLIError(f"--attention-precision fp8 runs our Triton kernels; drop --backend {backend}")
    interpreted = backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        raise CLIError(f"--attention-precision fp8 needs a CUDA GPU with fp8 tensor cores (compute capability 8.9 or "
                       f"9.0); this run is on {device}. Drop --attention-precision")
    if dtype_name not in ("bfloat16", "float16"):
        raise CLIError(f"--attention-precision fp8 quantizes 16-bit attention inputs; this run is {dtype_name}: add "
                       "--dtype bfloat16")
    if device.type != "cuda":
        return
    from .attention.fp8 import check_device

    try:
        check_device(device)
    except ValueError as exc:
        raise CLIError(f"--attention-precision fp8: {exc}") from None


def _check_backend(backend: str, device) -> None:
    """Refuse, before anything loads, an attention backend that cannot run on ``device``."""
    if device.type == "cuda" or backend in ("auto", "torch"):
        return
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        return  # the Triton interpreter runs the kernels on CPU tensors (slowly: tests)
    runs = ("runs our Triton kernels, which need CUDA tensors" if backend == "triton"
            else "runs compiled FlexAttention, which needs CUDA for the log-sum-exp the op returns")
    hint = (" (or set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter, slowly)" if backend == "triton"
            else "")
    raise CLIError(f"--backend {backend} {runs}, and this run is on {device}; use --backend torch or auto (the PyTorch "
                   f"path on the CPU){hint}")


class _DecodeProgress:
    """Progress and timing of the VAE decode, which runs inside the pipeline call after the last denoising step.

    A forward pre-hook on ``vae.decoder`` marks the start and counts its calls: the Wan VAE runs its decoder once per
    latent frame (``frames`` calls, untiled), other VAEs once, or once per tile (then the total is unknown).
    """

    def __init__(self, vae, frames: int | None):
        self.start: float | None = None
        self.total, self.unit = (frames, "frame") if frames else (None, "call")
        self._bar = None
        decoder = getattr(vae, "decoder", None)
        self._handle = decoder.register_forward_pre_hook(self._called) if decoder is not None else None

    def _called(self, module, inputs) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self.start = time.perf_counter()
            desc = "VAE decode (latent frames)" if self.total else "VAE decode"
            self._bar = tqdm(total=self.total, desc=desc, unit=self.unit, file=sys.stderr)
        self._bar.update(1)

    def close(self) -> float | None:
        """Remove the hook, close the bar; the seconds since the decode started (``None`` if it never did)."""
        if self._handle is not None:
            self._handle.remove()
        if self._bar is not None:
            self._bar.close()
        return None if self.start is None else time.perf_counter() - self.start


def _check_pipeline_rules(pipe, fam, frames: int, height: int, width: int, args=None) -> tuple[int, int, int]:
    """The loaded pipeline's own rules, as a CLI error naming the values that work, before the pipeline raises
    mid-call: a package it needs (:func:`~radial_diffusers.pipelines.missing_dependency`), its fewest steps (``ModelFamily.min_steps``), its frames and sides (LTX-Video: 8k+1 frames, multiples
    of 32). A size the user did not give (``args``' flag is None: the CLI's default) is lowered to the nearest one
    that works instead, with a note. Returns ``(frames, height, width)``."""
    from .pipelines import geometry_problem, missing_dependency

    missing = missing_dependency(pipe, image=getattr(args, "image", None) is not None)
    if missing is not None:
        raise CLIError(missing)
    steps = getattr(args, "steps", None)
    if steps is not None and steps < fam.min_steps:
        raise CLIError(f"--steps {steps}: {type(pipe).__name__} needs at least {fam.min_steps} denoising steps")
    sizes = [frames, height, width]
    problem = geometry_problem(pipe, *sizes, family=fam)
    while problem is not None:
        which, text = problem
        flag = ("--frames", "--height", "--width")[which]
        if args is None or getattr(args, flag[2:]) is not None or sizes[which] <= 1:
            raise CLIError(f"{flag} {sizes[which]}: {text}")
        sizes[which] -= 1
        problem = geometry_problem(pipe, *sizes, family=fam)
        if problem is None or problem[0] != which:  # this size fits now
            _note(f"note: the default {flag} lowered to {sizes[which]} ({type(pipe).__name__}'s rule)")
    return tuple(sizes)


def _size_from_image(pipe, image, height: int, width: int) -> tuple[int, int]:
    """The ``(height, width)`` an image-to-video pipeline that takes no size picks for ``image`` (HunyuanVideo-1.5:
    the bucket of its ``target_size`` nearest the image's aspect ratio), with a note where ``--height`` / ``--width``
    differ; ``(height, width)`` unchanged for a pipeline that does not say."""
    pick = getattr(getattr(pipe, "video_processor", None), "calculate_default_height_width", None)
    target = getattr(pipe, "target_size", None)
    if pick is None or target is None:
        return height, width
    h, w = (int(x) for x in pick(height=image.height, width=image.width, target_size=target))
    if (h, w) != (height, width):
        _note(f"note: {type(pipe).__name__} takes no --height/--width: the image and its target size "
              f"{target} give {h}x{w}")
    return h, w


def _run_defaults(args) -> tuple[bool, int, int, int, int]:
    """``(tiny, frames, height, width, steps)`` of a ``generate`` / ``eval`` call, the model's defaults filled in
    (the trained toy model, the random tiny ones, real checkpoints); also sets the default block size and dense
    layers on ``args``."""
    tiny = _check_model_name(args.model) == "tiny"
    toy = tiny and get_tiny(args.model)[1].trained
    defaults = TOY_DEFAULTS if toy else TINY_DEFAULTS if tiny else REAL_DEFAULTS
    from .pipelines import family_before_loading

    # frames by the family's VAE (Mochi 6k+1, LTX-Video 8k+1, others 4k+1) where the name tells it (a tiny model, a
    # local or cached model_index.json), else as given; sides by the 16 rule of most families. The loaded
    # pipeline's own rule is checked below (_check_pipeline_rules), which names the values that work.
    family = family_before_loading(args.model)
    frames, height, width = _normalise_geometry(
        args.frames or defaults["frames"], args.height or defaults["height"], args.width or defaults["width"],
        temporal=family.vae_temporal if family is not None else None)
    if args.block_size is None:
        args.block_size = TOY_BLOCK_SIZE if toy else TINY_BLOCK_SIZE if tiny else None  # None: the model's preset
    if args.dense_layers is None and tiny and not toy:
        args.dense_layers = TINY_DENSE_LAYERS
    if toy:
        _note_unknown_toy_words(args.prompt)
    return tiny, frames, height, width, args.steps or defaults["steps"]


def _note_unknown_toy_words(prompt: str | list[str] | None) -> None:
    """The toy model was trained on its captions' 30 words; any other word reaches it as ``<unk>``."""
    from .toy.vocab import TOY_WORDS

    prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
    unknown = sorted({w for p in prompts for w in p.lower().split() if w not in TOY_WORDS})
    if unknown:
        _note(f"note: {TOY_MODEL} knows only the words of its training captions; not among them: "
              f"{', '.join(unknown)} (each reads as one unknown token). Its words: {' '.join(TOY_WORDS)}")


def _device_dtype(args):
    """``(torch.device, dtype name)`` from ``--device`` / ``--dtype``, checked."""
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise CLIError(f"--device {args.device}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device, args.dtype or ("float32" if device.type == "cpu" else "bfloat16")


def _start_parallel(args) -> dict | None:
    """With ``--ulysses`` / ``--ring`` above 1: join the torchrun process group (NCCL on CUDA, gloo on the CPU) and
    return this process's place in it; ``None`` on one process. A run outside torchrun, or with another process
    count, is a :class:`CLIError` naming the launch command."""
    import os

    import torch

    ranks = args.ulysses * args.ring
    if ranks == 1:
        return None
    if args.compare is not None:
        raise CLIError("--compare dense runs on one process; drop --ulysses / --ring to compare")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != ranks:
        raise CLIError(f"--ulysses {args.ulysses} --ring {args.ring} needs {ranks} processes, this run has {world}; "
                       f"launch it as: torchrun --nproc-per-node {ranks} -m radial_diffusers generate "
                       f"--ulysses {args.ulysses} --ring {args.ring} ...")
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        import atexit

        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    return {"ulysses": args.ulysses, "ring": args.ring, "world_size": world, "rank": dist.get_rank(),
            "local_rank": local_rank, "process_group_backend": dist.get_backend()}


def _check_parallel_attention(args, family) -> None:
    """``--attention dense`` with ``--ulysses`` / ``--ring`` runs Diffusers' stock attention on the shards: refused
    where that is wrong (a joint text + video family, Cosmos: ``ModelFamily.stock_runs_parallel``) or fails (ring
    attention on the native backend)."""
    if args.attention != "dense" or (family.stock_runs_parallel and args.ring == 1):
        return
    why = (family.stock_parallel_problem() or
           "ring attention needs a log-sum-exp that the default (native) attention backend does not return")
    raise CLIError(f"--attention dense with --ulysses / --ring: {why}; run the dense baseline on one process, or keep "
                   "radial attention (--dense-steps and --dense-layers make any step or layer dense)")


def _add_frame_rate(call_kwargs: dict, pipe, fps: int) -> None:
    """Puts the frame rate the video is written at into the call of a pipeline that conditions on one
    (``frame_rate``: LTX-Video's RoPE scale, LTX-2's positions and audio length; ``fps``: SkyReels-V2 diffusion
    forcing's frame-rate class), so it plays at the rate it was generated for."""
    params = inspect.signature(pipe.__call__).parameters
    for name in ("frame_rate", "fps"):
        if name in params:
            call_kwargs[name] = fps


def _add_window(call_kwargs: dict, pipe, frames: int) -> None:
    """:func:`~radial_diffusers.pipelines.one_window` on the call, with its note."""
    from .pipelines import one_window

    note = one_window(pipe, frames, call_kwargs)
    if note:
        _note(note)


def _add_guidance(call_kwargs: dict, pipe, fam, args: argparse.Namespace) -> None:
    """Puts ``--guidance-scale`` (and generate's ``--negative-prompt`` / ``--true-cfg-scale``) into the call, or into
    the pipeline's guider where the call takes no scale (HunyuanVideo-1.5); notes a negative prompt that guidance
    leaves unused."""
    params = inspect.signature(pipe.__call__).parameters
    negative, true_scale = getattr(args, "negative_prompt", None), getattr(args, "true_cfg_scale", None)
    if true_scale is not None and "true_cfg_scale" not in params:
        raise CLIError(f"--true-cfg-scale applies to pipelines with a true_cfg_scale option (HunyuanVideo); "
                       f"{type(pipe).__name__} uses --guidance-scale")
    if negative is not None:
        call_kwargs["negative_prompt"] = negative
        if "true_cfg_scale" in params:
            if not (true_scale or 0) > 1:
                _note(f"{fam.label} uses --negative-prompt only with --true-cfg-scale > 1; it is ignored now")
        elif args.guidance_scale is not None and args.guidance_scale <= 1:
            _note(f"{fam.label} uses --negative-prompt through classifier-free guidance, which --guidance-scale "
                  f"{args.guidance_scale:g} turns off (> 1 enables it); it is ignored now")
    if true_scale is not None:
        call_kwargs["true_cfg_scale"] = true_scale
    if args.guidance_scale is not None:
        if "guidance_scale" not in params and getattr(pipe, "guider", None) is not None:
            pipe.guider = pipe.guider.new(guidance_scale=args.guidance_scale)  # HunyuanVideo-1.5: its guider guides
        else:
            call_kwargs["guidance_scale"] = args.guidance_scale


def _check_lora(args: argparse.Namespace) -> None:
    """``--lora`` names an existing file or folder; ``--lora-scale`` comes with it (default 1.0)."""
    if args.lora is None:
        if args.lora_scale is not None:
            raise CLIError(f"--lora-scale {args.lora_scale:g} sets the strength of a --lora adapter; pass --lora PATH "
                           f"too, or drop --lora-scale")
        return
    if not Path(args.lora).exists():
        raise CLIError(f"--lora {args.lora}: no such file or directory")
    if args.lora_scale is None:
        args.lora_scale = 1.0


def _check_dfloat11_path(path: str) -> None:
    if not Path(path).expanduser().exists() and not is_hub_id(path):
        raise CLIError(f"--dfloat11 {path}: no such file or directory")


def _guidance_used(pipe, args: argparse.Namespace) -> float | None:
    """The guidance scale the last call used: the pipeline's, or its guider's (HunyuanVideo-1.5)."""
    return getattr(pipe, "guidance_scale",
                   getattr(getattr(pipe, "guider", None), "guidance_scale", args.guidance_scale))


def _cmd_generate(args) -> int:
    tiny, frames, height, width, steps = _run_defaults(args)
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise CLIError(f"--out must be an .mp4 path, got {args.out!r}")
    _check_writable(out, "--out")  # the video, the mask picture and the report go there
    stem = out.with_suffix("")
    for path in (out, *(stem.with_name(stem.name + end) for end in (".mask.png", ".json", ".dense.mp4"))):
        if path.is_dir():
            raise CLIError(f"--out {args.out}: {path} is a folder, where the run writes a file; choose another --out")
    _check_lora(args)
    if args.dfloat11 is not None:
        _check_dfloat11_path(args.dfloat11)
    if args.dfloat11 is not None and args.quant is not None:
        raise CLIError("--dfloat11 and --quant are alternatives (lossless BF16 vs low-bit weights); pick one")
    _check_before_loading(args, tiny)

    import torch

    parallel = _start_parallel(args)  # before the device: each process takes its own GPU
    device, dtype_name = _device_dtype(args)
    if parallel is not None:
        if args.offload is not None:
            raise CLIError("--offload and --ulysses / --ring are alternatives (offloading moves the weights of one "
                           "process; context parallelism splits the sequence over several); pick one")
        if device.type == "cuda":
            device = torch.device("cuda", parallel["local_rank"])
    if args.compare is not None and args.attention != "radial":
        raise CLIError("--compare dense compares radial attention with dense; drop --attention dense")
    if args.offload == "model" and device.type == "cpu":
        raise CLIError(
            "--offload model moves each model between the CPU and an accelerator, and this run is on the CPU (no "
            "CUDA device); drop --offload or use --offload group"
        )
    if args.attention == "radial":
        _check_backend(args.backend, device)
        _check_precision(args.attention_precision, args.backend, device, dtype_name)
    if args.quant is not None:  # before loading (for a Hub model: before the download)
        from .quant import check_scheme

        try:
            check_scheme(args.quant, device)
        except (ValueError, ImportError) as exc:
            raise CLIError(f"--quant {args.quant}: {exc}") from None
    dtype = getattr(torch, dtype_name)

    import diffusers

    t_load = time.perf_counter()
    from .pipelines import detect_family, is_image_to_video, latent_geometry

    pipe = _load_pipeline(args.model, dtype, dfloat11=args.dfloat11, revision=args.revision)
    fam = detect_family(pipe)  # an unsupported pipeline: UnsupportedModelError, one line
    pipe = _readable(pipe, args)
    family, i2v = fam.name, is_image_to_video(pipe)
    frames, height, width = _check_pipeline_rules(pipe, fam, frames, height, width, args)
    if args.quant is not None:
        _quantize_transformer(pipe, args.quant, args.group_size, device)
    image, height, width = _image_for(args, pipe, tiny, height, width)
    params = inspect.signature(pipe.__call__).parameters
    preset = fam.preset_for(pipe, pipe.transformer)  # Wan2.2 A14B: its own preset
    cfg = _radial_config(args, preset)

    if args.flow_shift is not None:
        _set_flow_shift(pipe, args.flow_shift)  # before apply_radial_attention: its hook reads pipe.scheduler

    if args.lora is not None:
        try:
            pipe.load_lora_weights(args.lora, adapter_name="cli")
            pipe.set_adapters(["cli"], [args.lora_scale])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CLIError(f"--lora {args.lora}: could not load it ({type(exc).__name__}: {exc})") from None

    if parallel is not None:
        _check_parallel_attention(args, fam)
        from .parallel import enable_context_parallelism

        pipe.to(device)
        try:
            enable_context_parallelism(pipe, ulysses=args.ulysses, ring=args.ring)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CLIError(str(exc)) from None
        if parallel["rank"] != 0:
            pipe.set_progress_bar_config(disable=True)

    state = None
    if args.attention == "radial":
        from .integration import apply_radial_attention

        try:
            state = apply_radial_attention(pipe, cfg)
        except (TypeError, ValueError, NotImplementedError) as exc:
            raise CLIError(str(exc)) from None
        video_geometry = latent_geometry(pipe, frames, height, width)
        try:
            mask = state.block_mask(video_geometry, 0)
        except ValueError as exc:  # a mask too large to build: name the flags that size it
            raise CLIError(f"--frames {frames} --height {height} --width {width}: {exc} (--block-size)") from None
        _check_mask_rows(mask, cfg.block_size, video_geometry[1] * video_geometry[2])

    if args.offload == "model":
        try:
            pipe.enable_model_cpu_offload(device=device)
        except RuntimeError as exc:
            raise CLIError(f"--offload model failed: {exc}") from None
    elif args.offload == "group":
        for name, component in pipe.components.items():
            if name != "transformer" and isinstance(component, torch.nn.Module):
                component.to(device)
        pipe.transformer.enable_group_offload(
            onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1,
        )
    else:
        pipe.to(device)

    vae = getattr(pipe, "vae", None)
    tiling = args.vae_tiling == "on" or (args.vae_tiling == "auto" and not tiny and frames > VAE_TILING_MIN_FRAMES)
    if tiling:
        if not hasattr(vae, "enable_tiling"):
            raise CLIError(f"--vae-tiling on: {type(vae).__name__} has no enable_tiling()")
        vae.enable_tiling()
    load_seconds = time.perf_counter() - t_load

    # Timing and bookkeeping: a pre-hook on the transformer marks the first denoising forward (and HunyuanVideo's
    # text length); the step-end callback closes each step and notes whether any sparse attention call ran.
    # A pipeline without callback_on_step_end (HunyuanVideo-1.5): a step ends where a call with a new timestep starts,
    # the last one where the VAE decode starts.
    clock = {"start": None, "ends": [], "sparse": [], "sparse_steps": 0, "sparse_seen": 0, "text_tokens": 0, "t": None}
    callbacks = "callback_on_step_end" in params

    def _pre_hook(module, hook_args, hook_kwargs):
        if clock["start"] is None:
            clock["start"] = time.perf_counter()
        call = fam.read_call(module, hook_args, hook_kwargs)
        clock["text_tokens"] = int(call.text_tokens)
        if not callbacks:
            t = float(torch.as_tensor(call.timestep).float().amax())
            if clock["t"] is not None and t != clock["t"]:
                _on_step_end(None, None, None, {})
            clock["t"] = t

    def _on_step_end(pipeline, i, t, callback_kwargs, end=None):
        clock["ends"].append(time.perf_counter() if end is None else end)
        if state is not None:
            seen = sum(sum(s.sparse_calls.values()) for s in state.experts)  # every expert (Wan2.2 A14B)
            if seen > clock["sparse_seen"]:
                clock["sparse_steps"] += 1
            clock["sparse"].append(seen > clock["sparse_seen"])
            clock["sparse_seen"] = seen
        return callback_kwargs

    handle = pipe.transformer.register_forward_pre_hook(_pre_hook, with_kwargs=True)
    call_kwargs = dict(
        prompt=args.prompt, num_frames=frames, num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np",
    )
    if _takes_size(pipe):
        call_kwargs.update(height=height, width=width)
    if callbacks:
        call_kwargs["callback_on_step_end"] = _on_step_end
    _add_guidance(call_kwargs, pipe, fam, args)
    _add_frame_rate(call_kwargs, pipe, args.fps or fam.fps_for(pipe))
    if image is not None:
        call_kwargs["image"] = image
    if tiny:
        call_kwargs.update(get_tiny(args.model)[1].kwargs())
    _add_window(call_kwargs, pipe, frames)

    print(f"{PROG}: {args.model} ({type(pipe).__name__}), {frames} frames at {height}x{width}, {steps} steps, "
          f"{args.attention} attention, {device} {dtype_name}", file=sys.stderr)
    vae_frames = (frames - 1) // getattr(pipe, "vae_scale_factor_temporal", 4) + 1
    # the Wan VAE runs its decoder once per latent frame (untiled): a bar with a known total
    per_frame = type(vae).__name__ == "AutoencoderKLWan" and not tiling
    decode = _DecodeProgress(vae, vae_frames if per_frame else None)
    t0 = time.perf_counter()
    try:
        result = pipe(**call_kwargs)
    finally:
        handle.remove()
        decode_seconds = decode.close()
    total_seconds = time.perf_counter() - t0
    if not callbacks and clock["start"] is not None:
        _on_step_end(None, None, None, {}, end=decode.start)  # the last step
    video = result.frames[0]
    if len(video) != frames:  # CogVideoX 1.5 pads its latent frames to whole temporal patches and decodes them all
        _note(f"note: {type(pipe).__name__} returned {len(video)} frames for {frames} (its own rounding of the "
              "frame count)")
    compare = None
    if args.compare == "dense":
        compare = _compare_dense(pipe, call_kwargs, video, args.seed, out, args.fps or fam.fps_for(pipe))

    geometry = tuple(state.geometry) if state is not None and state.geometry else latent_geometry(
        pipe, frames, height, width)
    text_tokens = clock["text_tokens"]
    seq_len = geometry[0] * geometry[1] * geometry[2] + text_tokens
    if state is not None:
        mask = state.block_mask(geometry, text_tokens)
        from .masks import mask_stats

        mask_cost = mask_stats(mask, cfg.block_size, seq_len)
        stats = _stats_dict(mask_cost)
    else:
        mask = None
        stats = {"density": 1.0, "sparsity": 0.0, "flops_saved": 0.0, "speedup_bound": 1.0}

    fps = args.fps or fam.fps_for(pipe)
    if parallel is not None and parallel["rank"] != 0:
        return 0  # every process ran the same call; rank 0 writes the files
    t_write = time.perf_counter()
    audio = _audio_of(result, pipe)
    _write_video(video, out, fps, audio)
    stem = out.with_suffix("")
    mask_png = None
    if mask is not None:
        mask_png = _save_mask_picture(
            mask, stem.with_name(stem.name + ".mask.png"), model=family, geometry=geometry, text_tokens=text_tokens,
            cfg=cfg, stats=mask_cost,
            title=f"radial mask: {args.model} {height}x{width}x{frames} (latent {geometry[0]}x{geometry[1]}x"
            f"{geometry[2]})")
    write_seconds = time.perf_counter() - t_write
    report_path = stem.with_name(stem.name + ".json")

    ends = clock["ends"]
    step_times = []
    if clock["start"] is not None and ends:
        marks = [clock["start"], *ends]
        step_times = [b - a for a, b in zip(marks, marks[1:])]
    from .evaluation.timing import means_by_kind

    sparse_mean, dense_mean = means_by_kind(step_times, clock["sparse"])
    from dataclasses import asdict

    policy = cfg.resolve(preset, steps) if state is not None else None
    report = {
        "model": args.model,
        "revision": args.revision,
        "pipeline": type(pipe).__name__,
        "family": family,
        "preset": preset,
        "image_to_video": i2v,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "image": args.image,
        "frames": int(video.shape[0]),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "fps": fps,
        # the audio track muxed into the mp4 (audio-video pipelines: LTX-2)
        "audio": None if audio is None else {"sample_rate": audio[1], "channels": int(audio[0].shape[0]),
                                             "seconds": float(audio[0].shape[1] / audio[1])},
        "latent_geometry": list(geometry),
        "tokens_per_frame": geometry[1] * geometry[2],
        "text_tokens": text_tokens,
        "seq_len": seq_len,
        "block_size": cfg.block_size,
        "attention": args.attention,
        **stats,
        "config": asdict(cfg) if state is not None else None,
        "dense_steps_resolved": policy.dense_steps if policy else None,
        "last_dense_steps_resolved": policy.last_dense_steps if policy else None,
        "backend": state.backend if state is not None else None,
        "steps": steps,
        "sparse_steps": clock["sparse_steps"],
        # denoising passes seen (= steps, but SkyReels-V2 diffusion forcing runs each step per frame chunk)
        "denoising_passes": len(clock["ends"]),
        "guidance_scale": _guidance_used(pipe, args),
        "true_cfg_scale": args.true_cfg_scale,
        "flow_shift": pipe.scheduler.config.get(_shift_key(pipe.scheduler)) if _shift_key(pipe.scheduler) else None,
        "seed": args.seed,
        "dfloat11": args.dfloat11,
        "quant": args.quant,
        "lora": args.lora,
        "lora_scale": args.lora_scale if args.lora else None,
        "offload": args.offload,
        "vae_tiling": bool(tiling),
        "parallel": None if parallel is None else {k: parallel[k] for k in ("ulysses", "ring", "world_size",
                                                                            "process_group_backend")},
        "step_seconds": step_times,
        "seconds_per_step": sum(step_times) / len(step_times) if step_times else None,
        "sparse_seconds_per_step": sparse_mean,
        "dense_seconds_per_step": dense_mean,
        "total_seconds": total_seconds,
        "denoise_seconds": ends[-1] - clock["start"] if clock["start"] is not None and ends else None,
        "decode_seconds": decode_seconds,
        "write_seconds": write_seconds,
        "load_seconds": load_seconds,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": dtype_name,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "outputs": {"video": str(out), "mask_png": str(mask_png) if mask_png else None, "report": str(report_path)},
        "compare": compare,
    }
    from ._io import atomic_write_text

    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    # an earlier run to the same --out left files this one does not write: they would read as this run's
    for end, written in ((".mask.png", mask_png is not None), (".dense.mp4", compare is not None)):
        stale = stem.with_name(stem.name + end)
        if not written and stale.is_file():
            stale.unlink()
            _note(f"note: removed {stale}, an earlier run's output to the same --out")
    per_step = f"{report['seconds_per_step']:.2f} s/step" if step_times else "n/a s/step"
    decoded = f", VAE decode {decode_seconds:.1f} s" if decode_seconds is not None else ""
    print(f"{PROG}: wrote {out} ({report['frames']} frames {report['height']}x{report['width']} @ {fps} fps) in "
          f"{total_seconds:.1f} s ({per_step}{decoded}, writing {write_seconds:.1f} s); {args.attention} attention, "
          f"density {stats['density']:.3f}, {report['sparse_steps']}/{len(clock['ends']) or steps} sparse "
          f"{'steps' if len(clock['ends']) in (0, steps) else 'denoising passes'}; report {report_path}")
    if sparse_mean is not None and dense_mean is not None:
        # Say what the skipped blocks bought here, measured in this run, rather than quote the FLOP bound.
        print(f"{PROG}: measured in this run: sparse steps {sparse_mean:.3f} s/step, dense steps {dense_mean:.3f} "
              f"s/step ({dense_mean / sparse_mean:.2f}x; the first step and the first sparse one are warm-up, not "
              f"counted). The mask skips "
              f"{100 * (1 - stats['density']):.0f}% of the attention blocks; a step also runs the projections, MLPs "
              f"and norms, so it gains less than the {stats['speedup_bound']:.1f}x bound of attention alone")
    if compare is not None:
        from .evaluation.timing import mean_after_first

        radial_mean = mean_after_first(step_times)
        speed = "" if not radial_mean or not compare["dense_seconds_per_step"] else (
            f" ({compare['dense_seconds_per_step'] / radial_mean:.2f}x)")
        print(f"{PROG}: --compare dense: radial {_seconds(radial_mean)} s/step (sparse steps "
              f"{_seconds(sparse_mean)}) vs dense {_seconds(compare['dense_seconds_per_step'])} s/step{speed}, "
              f"measured in this run; radial vs dense video: PSNR "
              f"{'inf (identical)' if compare['identical'] else format(compare['psnr_db'], '.2f')} dB, SSIM "
              f"{compare['ssim']:.4f}; dense video {compare['dense_video']}")
    return 0


def _seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _compare_dense(pipe, call_kwargs: dict, radial_video, seed: int, out: Path, fps: int) -> dict:
    """``generate --compare dense``: the same call with dense attention (radial attention removed), timed per step;
    writes ``<out>.dense.mp4`` and returns the comparison for the report."""
    import torch

    from .evaluation.metrics import video_psnr, video_ssim
    from .evaluation.timing import StepClock, mean_after_first
    from .integration import remove_radial_attention

    remove_radial_attention(pipe)
    kwargs = dict(call_kwargs, generator=torch.Generator("cpu").manual_seed(seed))
    kwargs.pop("callback_on_step_end", None)
    _note("--compare dense: generating the same seed with dense attention")
    clock = StepClock(pipe)
    with clock.watch():
        result = pipe(**kwargs)
    dense = result.frames[0]
    path = out.with_name(out.stem + ".dense.mp4")
    _write_video(dense, path, fps, _audio_of(result, pipe))
    psnr, ssim = video_psnr(dense, radial_video), video_ssim(dense, radial_video)
    finite = psnr[torch.isfinite(psnr)]
    steps = clock.steps()
    broken = bool(torch.isnan(psnr).any())  # NaN pixels in either video: no PSNR, and never "identical"
    return {"dense_video": str(path), "dense_step_seconds": steps,
            "dense_seconds_per_step": mean_after_first(steps),
            # PSNR over the frames that differ (an identical frame has infinite PSNR: null, and "identical" says so)
            "psnr_db": float("nan") if broken else float(finite.mean()) if finite.numel() else None,
            "identical": bool(torch.isposinf(psnr).all()),
            "ssim": float(ssim.mean()),
            "psnr_db_per_frame": [float(x) if math.isfinite(x) else None for x in psnr.tolist()],
            "ssim_per_frame": [float(x) for x in ssim]}


# -- eval ----------------------------------------------------------------------------------------------------------


def _cmd_eval(args) -> int:
    tiny, frames, height, width, steps = _run_defaults(args)
    out = Path(args.out)
    if taken(out) and not args.overwrite:
        raise CLIError(f"--out {args.out} exists; choose a new folder or pass --overwrite")
    if out.exists():
        check_replaceable(out, "report.json", "report folder of eval", "--out")
    _check_writable(out.parent, "--out")
    _check_lora(args)
    if not 0.0 < args.min_recall <= 1.0:
        raise CLIError(f"--min-recall must be in (0, 1], got {args.min_recall}")
    if args.suggest and args.recall_rows == 0:
        raise CLIError("--suggest measures recall: --recall-rows must be > 0")
    from .quant import SCHEMES

    unknown = [q for q in args.quant if q not in SCHEMES]
    if unknown:
        raise CLIError(f"--quant {' '.join(unknown)}: unknown scheme; choose from {', '.join(SCHEMES)}")
    _check_before_loading(args, tiny)
    import torch

    device, dtype_name = _device_dtype(args)
    if args.dfloat11 and dtype_name != "bfloat16":  # known now, not after every other variant has run
        raise CLIError(f"--dfloat11 compresses BF16 weights losslessly, and this run loads the model in {dtype_name}; "
                       "add --dtype bfloat16")
    if isinstance(args.dfloat11, str):  # a checkpoint, not compression in memory
        _check_dfloat11_path(args.dfloat11)
    if args.backend != "auto":
        _check_backend(args.backend, device)
    _check_precision(args.attention_precision, args.backend, device, dtype_name)
    from .evaluation.run import default_variants, evaluate
    from .pipelines import detect_family, experts

    pipe = _load_pipeline(args.model, getattr(torch, dtype_name), revision=args.revision)
    fam = detect_family(pipe)
    if isinstance(args.dfloat11, str) and len(experts(pipe)) > 1:
        raise CLIError(f"--dfloat11 {args.dfloat11}: a DF11 checkpoint replaces one transformer, and {args.model} has "
                       f"{len(experts(pipe))} experts; pass --dfloat11 without a path to compress each in memory")
    pipe = _readable(pipe, args)
    frames, height, width = _check_pipeline_rules(pipe, fam, frames, height, width, args)
    image, height, width = _image_for(args, pipe, tiny, height, width)
    takes_size = _takes_size(pipe)
    cfg = _radial_config(args, fam.preset_for(pipe, pipe.transformer))
    if args.flow_shift is not None:
        _set_flow_shift(pipe, args.flow_shift)
    pipe.to(device)
    call_kwargs = get_tiny(args.model)[1].kwargs() if tiny else {}
    _add_guidance(call_kwargs, pipe, fam, args)
    _add_frame_rate(call_kwargs, pipe, args.fps or fam.fps_for(pipe))
    _add_window(call_kwargs, pipe, frames)
    if image is not None:
        call_kwargs["image"] = image
    # a pipeline that takes no size (HunyuanVideo-1.5 image-to-video) gets it from the image
    geometry = dict(num_frames=frames, height=height if takes_size else None, width=width if takes_size else None,
                    num_inference_steps=steps, call_kwargs=call_kwargs)
    prompts = args.prompt or [DEFAULT_PROMPT]
    print(f"{PROG}: eval {args.model} ({type(pipe).__name__}), {frames} frames at {height}x{width}, {steps} steps, "
          f"{len(prompts)} prompt(s) x {len(args.seeds)} seed(s), {device} {dtype_name}", file=sys.stderr)
    configs = {}
    suggestion = None
    if args.suggest:
        from .evaluation.suggest import suggest_config

        suggestion = suggest_config(pipe, prompts, config=cfg, min_recall=args.min_recall, seeds=args.seeds,
                                    recall_rows=args.recall_rows, **geometry)
        print(f"{PROG}: --suggest measured recall along the dense trajectory:\n" + suggestion.explain())
        if suggestion.reached:
            configs["suggested"] = suggestion.config
        else:  # every layer dense: the dense variant already is that run
            _note("note: the suggestion is the dense reference itself; no 'suggested' variant is run (a lower "
                  "--min-recall, or a wider --decay-factor, may reach a target)")
    variants = default_variants(cfg, lora=args.lora, dfloat11=args.dfloat11 or False, quant=args.quant,
                                configs=configs, lora_scale=args.lora_scale)
    result = evaluate(pipe, prompts, variants=variants, seeds=args.seeds, recall_rows=args.recall_rows, **geometry)
    if suggestion is not None:
        result.settings["suggestion"] = suggestion.to_dict()
    # what the command line said and the pipeline call does not show: enough to run it again
    result.settings.update(model=args.model, height=height, width=width, image=args.image, seeds=list(args.seeds),
                           guidance_scale=_guidance_used(pipe, args),
                           dfloat11=args.dfloat11 if isinstance(args.dfloat11, str) else None,
                           flow_shift=args.flow_shift, lora=args.lora, quant=list(args.quant) or None)
    index = result.write(out, fps=args.fps or fam.fps_for(pipe), overwrite=args.overwrite)
    print(result.summary())
    print(f"{PROG}: wrote {index} (open it in a browser; numbers in {out / 'report.json'})")
    return 0


# -- compress ------------------------------------------------------------------------------------------------------


def _pattern_arg(text: str | None):
    if text is None:
        return None
    source = Path(text).expanduser()
    try:
        value = json.loads(source.read_text() if source.is_file() else text)
    except (json.JSONDecodeError, OSError) as exc:
        raise CLIError(f"--pattern: expected JSON or a JSON file, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise CLIError(f"--pattern: expected a JSON object {{regex: [linear paths]}}, got {type(value).__name__}")
    return value


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _check_tiny_subfolder(args, kind: str) -> None:
    """A tiny model is built in memory: ``--subfolder`` can name one of its transformers only."""
    if kind == "tiny" and args.subfolder not in (None, *TRANSFORMER_ATTRIBUTES):
        raise CLIError(f"--subfolder {args.subfolder}: {args.model} is built in memory and {args.command} takes one "
                       "of its transformers (transformer, or transformer_2 where it has two); drop --subfolder")


def _tiny_transformer(args):
    """The transformer ``--subfolder`` names (default ``transformer``) of the tiny pipeline ``args.model``, and
    whether the pipeline has a second expert."""
    import torch

    from .tiny import load_tiny

    # the trained toy model ships BF16 weights: loaded as they are (float32 would ask compress for --cast-bf16)
    pipe = load_tiny(args.model, 0, dtype=torch.bfloat16 if get_tiny(args.model)[1].trained else None)
    transformer = getattr(pipe, args.subfolder or "transformer", None)
    if transformer is None:
        raise CLIError(f"--subfolder {args.subfolder}: {args.model} has no {args.subfolder}; drop --subfolder")
    return transformer, getattr(pipe, "transformer_2", None) is not None


def _note_second_expert(args, two: bool | None) -> None:
    """Say that a two-expert pipeline's other expert (Wan2.2 A14B's ``transformer_2``) was left as it is; ``two``:
    whether the pipeline has one, ``None`` to read it from a local or cached ``model_index.json`` (after the run:
    fetching a Hub model's weights caches it)."""
    if two is None:
        from .pipelines import _experts_in_index

        two = _experts_in_index(args.model) > 1
    if two and args.subfolder in (None, "transformer"):
        done = {"compress": "compressed", "quantize": "quantized"}[args.command]
        print(f"{PROG} {args.command}: note: {args.model} has two experts, and this run {done} `transformer` (high "
              "noise) only; for `transformer_2` (low noise) run again with --subfolder transformer_2 and another OUT",
              file=sys.stderr)


def _check_out_dir(args) -> Path:
    """OUT of ``compress`` / ``quantize``: new (or ``--overwrite``), a folder, and writable; resolved (a link to a
    folder is written through, and the staging folder is made beside the real one)."""
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out} exists and is not a directory; choose a new directory")
    if taken(out) and not args.overwrite:
        raise CLIError(f"{out} exists; choose a new directory or pass --overwrite")
    model = Path(args.model).expanduser()
    if model.exists():  # OUT is replaced at the end: it must not be (or contain) the folder the weights come from
        from ._io import refuse_replacing

        refuse_replacing(out, model / (args.subfolder or "transformer"), "the source model folder", "OUT")
    if out.exists():
        if args.command == "compress":
            check_replaceable(out, "config.json", "DF11 checkpoint folder", "OUT", key="dfloat11_config")
        else:
            check_replaceable(out, "config.json", "quantized model folder", "OUT", key="quantization_config")
    return _check_writable(out, "OUT")


def _cmd_compress(args) -> int:
    pattern = _pattern_arg(args.pattern)
    _check_out_dir(args)
    kind = _check_model_name(args.model)
    _check_tiny_subfolder(args, kind)
    from .dfloat11 import compress

    if kind == "tiny":
        source, two = _tiny_transformer(args)
    else:
        source, two = args.model, None  # read after compressing (_note_second_expert)
    try:
        result = compress(source, args.out, pattern, subfolder=args.subfolder, variant=args.variant,
                          cast_to_bf16=args.cast_bf16, workers=args.workers, overwrite=args.overwrite,
                          verify=not args.no_verify)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    print(f"{PROG}: wrote {result.path}: {result.units} blocks, {_size(result.original_bytes)} BF16 -> "
          f"{_size(result.compressed_bytes)} DF11 (ratio {result.ratio:.4f}) in {result.seconds:.1f} s")
    _note_second_expert(args, two)
    return 0


def _cmd_quantize(args) -> int:
    import tempfile

    import torch

    out = _check_out_dir(args)
    kind = _check_model_name(args.model)
    _check_tiny_subfolder(args, kind)
    from diffusers import AutoModel

    from ._io import replace_dir
    from .dfloat11 import empty_model
    from .quant import quantization_config

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:  # same filesystem as OUT
        source, sub, two = args.model, args.subfolder, None  # two: read after quantizing (_note_second_expert)
        if kind == "tiny":
            transformer, two = _tiny_transformer(args)
            source, sub = str(Path(tmp) / "source"), None
            transformer.save_pretrained(source)
        elif sub is None and (kind == "hub" or (Path(args.model) / "model_index.json").exists()):
            sub = "transformer"
        try:
            # the model's structure (config.json only, meta device): the config skips exactly the Linears quantize()
            # skips, e.g. those whose input size the int4 group size does not divide
            structure = empty_model(source, sub)
            config = quantization_config(args.scheme, group_size=args.group_size, device=args.device,
                                         model=structure)
        except (ValueError, ImportError, OSError) as exc:
            raise CLIError(f"{args.model}: {first_sentences(str(exc)) or type(exc).__name__}") from None
        del structure
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:  # quantized where it will run: int4-weight's packing exists only on CUDA
            model = AutoModel.from_pretrained(source, subfolder=sub, quantization_config=config,
                                              torch_dtype=torch.bfloat16, device_map=str(device))
            staged = Path(tmp) / "quantized"
            model.save_pretrained(staged)
        except Exception as exc:  # OSError, torchao's AssertionErrors, kernels missing on this device, ...
            first = first_sentences(str(exc))
            raise CLIError(f"could not quantize {args.model} with {args.scheme}: {type(exc).__name__}"
                           f"{': ' + first if first else ''}") from None
        replace_dir(staged, out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{PROG}: wrote {out} ({type(model).__name__}, {args.scheme}, {_size(size)}); reload with "
          f"{type(model).__name__}.from_pretrained({str(out)!r})")
    _note_second_expert(args, two)
    return 0


def _cmd_train(args) -> int:
    from lora_training.train import run_cli

    return run_cli(args)


def _check_before_loading(args, tiny: bool) -> None:
    """``generate`` / ``eval``: what can be checked before a pipeline loads. A tiny model's kind (text- or
    image-to-video) and family are known from its name, so ``--image`` and the radial options are checked now; for
    other models only that ``--image`` exists (its kind is known once loaded: :func:`_image_for`)."""
    if tiny:
        tiny_family, tiny_model = get_tiny(args.model)
        if tiny_family.image_optional and args.image is not None:  # a pipeline that may take one: known once built
            _check_image_file(args.image)
        else:
            _check_image_arg(args, tiny_model.image_to_video)
        _radial_config(args, tiny_family.name)
    elif args.image is not None:
        _check_image_file(args.image)


def _image_for(args, pipe, tiny: bool, height: int, width: int):
    """``(image, height, width)`` for a loaded pipeline: ``--image`` checked against the pipeline's kind and read as
    RGB (``None`` for text-to-video); a pipeline that takes no size (HunyuanVideo-1.5 image-to-video) gets the size it
    picks for the image (:func:`_size_from_image`), others keep ``height`` / ``width``."""
    from .pipelines import detect_family, image_is_optional, is_image_to_video

    if not tiny or detect_family(pipe).image_optional:
        _check_image_arg(args, is_image_to_video(pipe), optional=image_is_optional(pipe))
    if args.image is None:
        return None, height, width
    _check_image_codec(pipe, tiny and get_tiny(args.model)[1].kwargs().get("image_crf") == 0)
    image = _load_image(args.image)
    if not _takes_size(pipe):
        height, width = _size_from_image(pipe, image, height, width)
    return image, height, width


def _takes_size(pipe) -> bool:
    """Whether the pipeline's call takes ``height`` / ``width`` (HunyuanVideo-1.5 image-to-video does not: the image
    sets the size)."""
    return "height" in inspect.signature(pipe.__call__).parameters


def _check_image_arg(args, i2v: bool, optional: bool = False) -> None:
    """``--image`` against the model's kind: required by an image-to-video model, refused by a text-to-video one
    unless its image is ``optional`` (Cosmos-Predict2.5 runs both)."""
    if optional:
        if args.image is not None:
            _check_image_file(args.image)
        return
    if i2v and args.image is None:
        raise CLIError(f"--image is required for the image-to-video model {args.model}")
    if not i2v and args.image is not None:
        from .families import tiny_models

        family = tiny_models().get(args.model, (None,))[0]
        twins = [t.name for t in family.tiny if t.image_to_video] if family is not None else []
        raise CLIError(f"--image was given but {args.model} is a text-to-video model (use an image-to-video model, "
                       f"e.g. {twins[0] if twins else 'tiny-wan-i2v'})")
    if args.image is not None:
        _check_image_file(args.image)


def _check_image_codec(pipe, crf_off: bool) -> None:
    """Before generating: a pipeline that re-compresses its conditioning image with H.264 as its model was trained
    (LTX-2 image-to-video's ``image_crf``) needs PyAV, which radial-diffusers does not install; ``crf_off``: the call
    passes ``image_crf=0`` (the tiny model)."""
    import importlib.util

    if crf_off or "image_crf" not in inspect.signature(pipe.__call__).parameters:
        return
    if importlib.util.find_spec("av") is None:
        raise CLIError(f"{type(pipe).__name__} re-compresses --image with H.264 as its model was trained, which "
                       "needs PyAV: pip install av")


def _check_image_file(path: str) -> None:
    if not Path(path).exists():
        raise CLIError(f"--image {path}: no such file")
    if not Path(path).is_file():
        raise CLIError(f"--image {path}: not a file (pass an image file, e.g. a .png or .jpg)")


# -- entry point ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torchao_hidden():
    """Run the command with torchao hidden from Diffusers, Transformers and PEFT.

    All three import torchao whenever it is installed (Diffusers and Transformers as their model modules load, PEFT
    when it adds a LoRA), and that import prints warnings on every run (pytree deprecations, "Failed to load
    ..._C_mxfp8...so", "Unable to import torchao Tensor objects"). Only for a process that runs one command that
    never quantizes (see :func:`main`): modules loaded meanwhile keep their torchao-less fallbacks.
    """
    import importlib.util

    if "torchao" in sys.modules or importlib.util.find_spec("torchao") is None:
        yield
        return
    from diffusers.utils import import_utils as diffusers_imports

    available = diffusers_imports._torchao_available  # Diffusers decides once, at its own import
    diffusers_imports._torchao_available = False
    sys.modules["torchao"] = None  # Transformers and PEFT ask importlib.util.find_spec, which then reports it missing
    try:
        yield
    finally:
        del sys.modules["torchao"]
        diffusers_imports._torchao_available = available
        transformers_imports = sys.modules.get("transformers.utils.import_utils")
        if transformers_imports is not None:
            transformers_imports.is_torchao_available.cache_clear()


def _quantized_checkpoint(model: str) -> bool:
    """Whether the pipeline ``model`` (local or in the Hub cache) holds a torchao-quantized transformer."""
    if model in tiny_models():
        return False
    configs = [Path(model).expanduser() / "transformer" / "config.json"]
    if is_hub_id(model) and not configs[0].exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "transformer/config.json")
        configs = [Path(cached)] if isinstance(cached, str) else []
    try:
        return any("quantization_config" in json.loads(c.read_text()) for c in configs if c.is_file())
    except (OSError, ValueError):
        return False  # loading reports the broken config


def _never_quantizes(args) -> bool:
    """Whether the command runs no torchao code (its import noise is then hidden): ``mask`` / ``compress``, and
    ``generate`` / ``eval`` without ``--quant`` on a checkpoint that is not quantized."""
    if args.command in ("compress", "mask"):
        return True
    if args.command in ("generate", "eval"):
        return not args.quant and not _quantized_checkpoint(args.model)
    return False


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Our warnings (radial attention's: every step dense, ...) as one line in CLI terms, as errors are; others as
    Python prints them. Ours go through ``tqdm.write``: one raised during the denoising loop gets its own line above
    the progress bar instead of continuing the bar's line."""
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if str(message).startswith("radial attention") or "radial_diffusers" in str(filename):
                from tqdm.auto import tqdm  # here, not at every command's start

                tqdm.write(f"{PROG} {command}: warning: {_cli_wording(str(message))}", file=file or sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input), never raises ``SystemExit``.

    ``argv=None`` reads the process's command line (the ``radial-diffusers`` script, ``python -m radial_diffusers``):
    the process then exists for this one command, and one that never quantizes loads Diffusers without torchao, so
    its output stays free of torchao's import warnings.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse errors (2) and --help / --version (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with _one_line_warnings(args.command):
            if argv is None and _never_quantizes(args):
                with _torchao_hidden():
                    return args.func(args)
            return args.func(args)
    except RadialError as exc:  # a user error: one line; anything else is a bug and keeps its traceback
        print(f"{PROG} {args.command}: error: {_cli_wording(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
