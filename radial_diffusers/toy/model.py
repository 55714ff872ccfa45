"""The toy Wan pipeline: a small Wan2.1-architecture model trained on :mod:`~radial_diffusers.toy.scenes` clips.

Unlike the random ``tiny-*`` pipelines, its weights were trained (``examples/toy/train_toy_model.py``, on a 2-core
CPU) and ship with the package (``radial_diffusers/toy/weights/``, bf16 safetensors). It has learned the captions'
backgrounds (stripes, grass, a dark field) and, for part of a 65-frame video, a soft-edged shape for some captions
(the yellow square of the demo's prompt for about its first half; over most of the demo's 97 frames), which then
fades; other captions give blobs of other colours or an empty field (a model of 1.1 M parameters trained for 52
minutes on a CPU). It exists to measure things: radial attention against dense attention on a model whose attention
has learned spatiotemporal structure (``radial-diffusers eval``), and the demo.

Architecture (built here, weights loaded from the package):

* transformer: ``WanTransformer3DModel``, 4 layers, 2 heads x head_dim 64 (width 128), FFN 384, patch (1, 1, 1),
  text width 32: 256 tokens per latent frame at 64x64 pixels. (With Wan's 2x2 patches a frame would have 64 tokens,
  and the radial mask at so few tokens per frame keeps only each frame's own block and the sink: nothing to
  measure. At 256 tokens per frame the mask has the paper's bands.)
* VAE: ``AutoencoderKLWan(base_dim=16, dim_mult=[1, 2, 4], temperal_downsample=[True, True], z_dim=16)``: x4 spatial
  and x4 temporal compression (Wan's VAE has one more spatial level, x8; at 4x the toy's codec compresses 12x
  instead of 48x, which a VAE trained for minutes on a CPU can learn); base width 16 (at 8 its full-resolution
  layers had 8 channels for texture, edges and colour, and it decoded the shapes as dark blurs: 17.5 dB on their
  pixels); its loss weighs the shapes' pixels 9x; trained on windows longer than its causal reach, so it does not
  drift over long videos; per-channel ``latents_mean`` / ``latents_std`` measured on the training clips.
* text: a frozen random 2-layer UMT5 encoder (width 32) over the toy vocabulary (:mod:`~radial_diffusers.toy.vocab`).
* scheduler: ``UniPCMultistepScheduler`` with flow sigmas, ``flow_shift=3.0`` (Wan's 480p setting).

Trained on clips of :data:`SHORT_TRAIN_FRAMES` frames, then of up to :data:`TRAIN_FRAMES` frames, at
:data:`TRAIN_SIZE` x :data:`TRAIN_SIZE` pixels; the demo generates 1.5x its longest, 97 frames (25 latent frames,
6,400 tokens), where the radial mask keeps 40% of the attention blocks; ``examples/toy/length_extension.py`` goes 2x
and 4x beyond it.

Example::

    >>> from radial_diffusers.toy.model import toy_wan_pipeline, TOY_CALL_KWARGS
    >>> pipe = toy_wan_pipeline()
    >>> video = pipe("a red circle moving right on a dark background", num_frames=17, height=64, width=64,
    ...              num_inference_steps=20, output_type="np", **TOY_CALL_KWARGS).frames[0]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

__all__ = [
    "TOY_WAN",
    "TRAIN_FRAMES",
    "SHORT_TRAIN_FRAMES",
    "TRAIN_SIZE",
    "TEXT_LENGTH",
    "TOY_CALL_KWARGS",
    "VAE_BASE_DIM",
    "WEIGHTS_DIR",
    "COMPONENTS",
    "toy_wan_vae",
    "toy_wan_transformer",
    "toy_wan_text_encoder",
    "toy_wan_scheduler",
    "toy_wan_pipeline",
    "training_record",
    "load_weights",
]

TOY_WAN = "toy-wan"
#: The longest clips the toy transformer was trained on, and their height and width (17 latent frames x 256 tokens =
#: 4,352 tokens): first on 17-frame clips, then on clips of 17 to 65 frames (``examples/toy/train_toy_model.py``).
TRAIN_FRAMES = 65
#: The clips of the transformer's first training stage (5 latent frames x 256 tokens = 1,280 tokens).
SHORT_TRAIN_FRAMES = 17
TRAIN_SIZE = 64
#: Text tokens per prompt (the longest toy caption has 13 words + ``</s>``).
TEXT_LENGTH = 16
#: Extra call arguments of the toy pipeline.
TOY_CALL_KWARGS: dict[str, Any] = {"max_sequence_length": TEXT_LENGTH}
#: Where the trained weights live: one ``<component>.safetensors`` per component, and ``training.json``.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
COMPONENTS = ("transformer", "vae", "text_encoder")
#: The VAE's base width the training script uses (the weights' ``training.json`` records the one they have).
VAE_BASE_DIM = 16


def toy_wan_vae(latents_mean: list[float] | None = None, latents_std: list[float] | None = None,
                base_dim: int = VAE_BASE_DIM):
    """The toy VAE architecture with fresh (untrained) weights; ``latents_mean`` / ``latents_std``: 16 floats each
    (default 0 / 1, the statistics the trained weights were measured with replace them); ``base_dim``: the width of
    its full-resolution layers (the trained weights' record says which)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[True, True],
        scale_factor_spatial=4, scale_factor_temporal=4,  # what WanPipeline reads (the defaults are Wan's 8 and 4)
        latents_mean=list(latents_mean or [0.0] * 16), latents_std=list(latents_std or [1.0] * 16),
    )


def toy_wan_transformer():
    """The toy transformer architecture with fresh (untrained) weights."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 1, 1), num_attention_heads=2, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=384, num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    )


def toy_wan_text_encoder():
    """``(tokenizer, text encoder)``: the toy tokenizer and a fresh 2-layer UMT5 encoder (width 32)."""
    from transformers import UMT5Config, UMT5EncoderModel

    from .vocab import toy_tokenizer

    config = UMT5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return toy_tokenizer(), UMT5EncoderModel(config)


def toy_wan_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                   num_train_timesteps=1000)


def training_record(weights_dir: str | Path | None = None) -> dict:
    """The record the training script wrote next to the weights (``training.json``: command, seeds, steps, run time,
    final losses, VAE latent statistics)."""
    path = Path(weights_dir or WEIGHTS_DIR) / "training.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: the toy weights are not installed; train them with "
                          "`python examples/toy/train_toy_model.py` (see its --help)")
    return json.loads(path.read_text())


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``module`` (cast to its dtypes). A tied tensor may be stored under any one of its
    names (UMT5's shared embedding); any other missing or extra key is an error naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: the toy weights are not installed; reinstall radial-diffusers, or "
                             "train them with `python examples/toy/train_toy_model.py`")
    state = load_file(str(path))
    own = module.state_dict(keep_vars=True)
    loaded = {id(own[k]) for k in state if k in own}
    missing = sorted(k for k, v in own.items() if k not in state and id(v) not in loaded)
    unexpected = sorted(set(state) - set(own))
    resized = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or resized:
        raise ModelLoadError(f"{path} does not fit the toy architecture (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}, other shapes {resized[:3]}): the weights and "
                             "radial_diffusers/toy/model.py (or their training.json) are out of step")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def toy_wan_pipeline(seed: int = 0, weights_dir: str | Path | None = None):
    """The trained toy ``diffusers.WanPipeline`` (float32, CPU, offline).

    ``seed`` is accepted for the tiny-model builder signature and ignored: the weights are the trained ones.
    ``weights_dir``: where the safetensors are (default: the package's :data:`WEIGHTS_DIR`). Call the pipeline with
    ``**TOY_CALL_KWARGS``; sizes are multiples of 16, frame counts ``4k + 1``.
    """
    from diffusers import WanPipeline

    del seed
    folder = Path(weights_dir or WEIGHTS_DIR)
    record = training_record(folder)
    stats = record["vae"]["latents"]
    vae = toy_wan_vae(stats["mean"], stats["std"], base_dim=record["vae"].get("base_dim", 8))  # 8: older records
    transformer = toy_wan_transformer()
    tokenizer, text_encoder = toy_wan_text_encoder()
    for name, module in (("transformer", transformer), ("vae", vae), ("text_encoder", text_encoder)):
        load_weights(module, folder / f"{name}.safetensors")
        module.eval().requires_grad_(False)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=toy_wan_scheduler())
