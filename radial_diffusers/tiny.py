"""Tiny random pipelines of every registered family (Wan2.1 / Wan2.2, HunyuanVideo, HunyuanVideo-1.5, CogVideoX,
LTX-Video, LTX-2, Mochi, Wan VACE, SkyReels-V2, Kandinsky 5, Cosmos: :func:`radial_diffusers.families.tiny_models`) that
build offline on CPU in a fraction of a second, and the trained toy model ``toy-wan``.

They are real Diffusers pipelines (``WanPipeline``, ``WanImageToVideoPipeline``, ``HunyuanVideoPipeline``, ...) with
random fp32 weights, so tests, examples and CPU demos can exercise the whole stack (text encoding, CFG, the
transformer attention processors, scheduler, VAE decode, ``save_pretrained`` / ``from_pretrained``) without the
model hub. The transformer / VAE configs follow Diffusers' own fast tests; the tokenizers are local
``tokenizers.WordLevel`` tokenizers wrapped in ``transformers.PreTrainedTokenizerFast`` with a small vocabulary
(:data:`VOCAB_WORDS`; any other word maps to ``<unk>``).

Differences from Diffusers' test fixtures, chosen so the tiny models can stand in for long videos:

* Wan transformers use ``rope_max_seq_len=1024`` (Diffusers' tests use 32), so post-patch frame/height/width counts
  up to 1024 each are valid (e.g. 81 frames at 256x256 -> 21 x 16 x 16 tokens).
* HunyuanVideo computes its RoPE on the fly from the grid size, so any number of frames works.

Call kwargs (also returned by :func:`default_call_kwargs`):

* ``tiny-wan`` / ``tiny-wan-i2v``: pass ``max_sequence_length=16`` (:data:`WAN_MAX_SEQUENCE_LENGTH`). The default
  512 also works, just slower. The tiny I2V transformer leaves ``added_kv_proj_dim=None`` (with ``image_dim=4``),
  as Diffusers' own I2V fast test does: the projected CLIP image tokens are then simply concatenated to the text
  keys of the cross-attention, so no text length is hard-coded. (With ``added_kv_proj_dim`` set, as in the real
  Wan2.1-I2V checkpoints, ``WanAttnProcessor`` splits the context with a hard-coded 512 text tokens and any other
  ``max_sequence_length`` is silently wrong.)
* ``tiny-hunyuan``: pass ``prompt_template=HUNYUAN_PROMPT_TEMPLATE`` (``{"template": "{}", "crop_start": 0}``); the
  default Llama template needs a 95-token crop that the tiny vocabulary cannot provide. We also pass
  ``max_sequence_length=16`` (:data:`HUNYUAN_MAX_SEQUENCE_LENGTH`, default 256) to keep the joint sequence short.
* ``tiny-hunyuan1.5`` / ``tiny-hunyuan1.5-i2v``: no extra arguments (the pipelines take no text length); the builders
  shrink the joint text to 28 tokens through the pipeline's instance attributes, which ``save_pretrained`` does not
  keep (see :func:`tiny_hunyuan15_pipeline`). Guidance is the pipeline's guider (scale 6.0), not a call argument.
* ``tiny-kandinsky5`` / ``tiny-kandinsky5-i2v``: pass ``max_sequence_length=32`` (the Qwen text after the template
  crop); the builders set the crop of the tiny tokenizer's template (``prompt_template_encode_start_idx``), which
  ``save_pretrained`` does not keep (see :func:`tiny_kandinsky5_pipeline`).
* ``tiny-cosmos1`` / ``tiny-cosmos2`` / ``tiny-cosmos2.5``: pass ``max_sequence_length=16`` / ``16`` / ``32``;
  ``tiny-cosmos2`` (video-to-world) needs an ``image`` (or a ``video``). They carry a pass-through safety checker
  (:class:`~radial_diffusers._guardrail.PassThroughGuardrail`) instead of NVIDIA's guardrail.

Example::

    >>> from radial_diffusers.tiny import load_tiny, default_call_kwargs
    >>> pipe = load_tiny("tiny-wan", seed=0)
    >>> out = pipe("a cat dancing on the beach at sunset", num_frames=9, height=32, width=32,
    ...            num_inference_steps=2, output_type="np", **default_call_kwargs("tiny-wan"))
    >>> out.frames.shape
    (1, 9, 32, 32, 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .errors import UnsupportedModelError
from .families import _resolve, get_tiny, tiny_models

__all__ = [
    "TINY_MODELS",
    "VOCAB_WORDS",
    "HUNYUAN_PROMPT_TEMPLATE",
    "WAN_MAX_SEQUENCE_LENGTH",
    "HUNYUAN_MAX_SEQUENCE_LENGTH",
    "WAN_ROPE_MAX_SEQ_LEN",
    "tiny_wan_pipeline",
    "tiny_wan_i2v_pipeline",
    "tiny_wan22_pipeline",
    "tiny_cogvideox_pipeline",
    "tiny_cogvideox15_pipeline",
    "tiny_ltx_pipeline",
    "tiny_ltx2_pipeline",
    "tiny_ltx2_i2v_pipeline",
    "tiny_mochi_pipeline",
    "tiny_wan_vace_pipeline",
    "tiny_wan22_vace_pipeline",
    "tiny_wan22_ti2v_pipeline",
    "COGVIDEOX_MAX_SEQUENCE_LENGTH",
    "tiny_hunyuan_pipeline",
    "tiny_hunyuan15_pipeline",
    "tiny_hunyuan15_i2v_pipeline",
    "tiny_skyreels_v2_pipeline",
    "tiny_skyreels_v2_i2v_pipeline",
    "tiny_skyreels_v2_df_pipeline",
    "tiny_kandinsky5_pipeline",
    "tiny_kandinsky5_i2v_pipeline",
    "tiny_cosmos1_pipeline",
    "tiny_cosmos2_pipeline",
    "tiny_cosmos25_pipeline",
    "COSMOS_MAX_SEQUENCE_LENGTH",
    "load_tiny",
    "default_call_kwargs",
]

#: Plain words of the tiny tokenizers' vocabulary (after the special tokens). Lower-case; the tokenizers lowercase
#: their input and split on whitespace and punctuation, so "A cat, dancing." tokenizes to known words.
#: Kept at <= 61 words so every id fits UMT5's ``vocab_size=64`` next to the 3 Wan special tokens.
VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "at", "and", "with", "is", ",", ".",
    "cat", "dog", "person", "man", "woman", "bird", "car", "horse",
    "dancing", "running", "walking", "flying", "jumping", "swimming",
    "beach", "sea", "ocean", "city", "street", "forest", "mountain", "river", "park", "field", "snow",
    "sunset", "sunrise", "night", "day", "sky", "sun", "rain",
    "red", "blue", "green", "yellow", "white", "black", "golden",
    "video", "camera", "slow", "motion", "cinematic", "beautiful", "high", "quality", "low", "blurry",
)  # fmt: skip

#: ``prompt_template`` for the tiny HunyuanVideo pipeline (the default one needs a 95-token crop).
HUNYUAN_PROMPT_TEMPLATE: dict[str, Any] = {"template": "{}", "crop_start": 0}

#: Text length to pass as ``max_sequence_length`` to the tiny Wan pipelines (T2V and I2V).
WAN_MAX_SEQUENCE_LENGTH = 16
#: Text length to pass as ``max_sequence_length`` to the tiny HunyuanVideo pipeline (Llama tokens).
HUNYUAN_MAX_SEQUENCE_LENGTH = 16
#: ``rope_max_seq_len`` of the tiny Wan transformers: the maximum post-patch length of each of the F/H/W axes.
WAN_ROPE_MAX_SEQ_LEN = 1024

_WAN_SCHEDULER_SHIFT = 7.0
_HUNYUAN_SCHEDULER_SHIFT = 7.0


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with ``torch.manual_seed(seed)`` without disturbing the caller's global CPU RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _word_level_tokenizer(
    specials: list[str],
    template: str,
    *,
    pad: str,
    unk: str,
    bos: str | None = None,
    eos: str | None = None,
    model_max_length: int = 512,
    words: tuple[str, ...] = VOCAB_WORDS,
):
    """Build a local ``PreTrainedTokenizerFast`` over ``specials + words`` (ids in that order).

    ``template`` is the ``TemplateProcessing`` single-sequence template, e.g. ``"$A </s>"``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in template.split() if t in vocab]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in used])
    kwargs: dict[str, Any] = {"pad_token": pad, "unk_token": unk}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **kwargs)


def _wan_text_parts(seed: int):
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _word_level_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad="<pad>", unk="<unk>", eos="</s>")
    with _seeded(seed):
        config = UMT5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )  # fmt: skip
        text_encoder = UMT5EncoderModel(config).eval()
    return tokenizer, text_encoder


def _wan_vae(seed: int):
    from diffusers import AutoencoderKLWan

    with _seeded(seed):
        return AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        ).eval()


def _wan_transformer(seed: int, *, i2v: bool = False, cls=None, **overrides):
    """The tiny Wan transformer (``cls``: a Wan-architecture class, default ``WanTransformer3DModel``); ``overrides``
    replace or add config entries (Wan2.2 TI2V's 48 channels, VACE's control blocks)."""
    if cls is None:
        from diffusers import WanTransformer3DModel as cls

    # I2V: noise (16) + condition latents (16) + mask (4) channels; CLIP image embeddings of width 4 appended to the
    # text context (added_kv_proj_dim=None, see the module docstring).
    extra: dict[str, Any] = {"image_dim": 4, "added_kv_proj_dim": None} if i2v else {}
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36 if i2v else 16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=WAN_ROPE_MAX_SEQ_LEN, **extra,
    )
    config.update(overrides)
    with _seeded(seed):
        return cls(**config).eval()


def tiny_wan_pipeline(seed: int = 0):
    """A tiny random Wan2.1 text-to-video ``diffusers.WanPipeline`` (fp32, CPU, offline).

    Transformer: 2 layers, 2 heads x head_dim 12, patch (1, 2, 2), ``rope_max_seq_len=1024``. VAE:
    ``AutoencoderKLWan(base_dim=3, z_dim=16)`` (x8 spatial, x4 temporal). Text encoder: 2-layer UMT5 (d_model 32)
    with a local WordLevel tokenizer. Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=7.0)``. Every module is
    built after ``torch.manual_seed(seed)`` (the caller's RNG state is preserved), so equal seeds give equal weights.

    Call it with ``**default_call_kwargs("tiny-wan")`` (``max_sequence_length=16``). Height/width must be multiples
    of 16, ``num_frames`` of the form ``4k + 1``.

    Example::

        >>> pipe = tiny_wan_pipeline(seed=0)
        >>> frames = pipe("a red cat running in the city", num_frames=9, height=32, width=32,
        ...               num_inference_steps=2, max_sequence_length=16, output_type="np").frames
        >>> frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer, text_encoder = _wan_text_parts(seed)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=_WAN_SCHEDULER_SHIFT),
        transformer=_wan_transformer(seed, i2v=False),
        transformer_2=None,
    )


def tiny_wan22_pipeline(seed: int = 0):
    """A tiny random Wan2.2 A14B-style text-to-video ``diffusers.WanPipeline`` with two experts (fp32, CPU, offline).

    As :func:`tiny_wan_pipeline`, plus ``transformer_2`` (the low-noise expert, its own random weights) and
    ``boundary_ratio=0.9``: steps with ``t >= 900`` run ``transformer``, the others ``transformer_2``, so a few-step
    call runs both. Call it with ``**default_call_kwargs("tiny-wan2.2")``.

    Example::

        >>> pipe = tiny_wan22_pipeline(seed=0)
        >>> pipe.config.boundary_ratio, type(pipe.transformer_2).__name__
        (0.9, 'WanTransformer3DModel')
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer, text_encoder = _wan_text_parts(seed)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=_WAN_SCHEDULER_SHIFT),
        transformer=_wan_transformer(seed, i2v=False),
        transformer_2=_wan_transformer(seed + 1, i2v=False),
        boundary_ratio=0.9,
    )


#: Text length of the tiny CogVideoX pipeline (its transformer's ``max_text_seq_length``; the prompt is padded to it).
COGVIDEOX_MAX_SEQUENCE_LENGTH = 16


def tiny_cogvideox_pipeline(seed: int = 0):
    """A tiny random CogVideoX text-to-video ``diffusers.CogVideoXPipeline`` (fp32, CPU, offline).

    Transformer: 2 layers, 2 heads x head_dim 16, patch 2, 3-D RoPE (as CogVideoX-5B), 16 text tokens (text first in
    the joint sequence). VAE: ``AutoencoderKLCogVideoX`` with 8 channels per level (x8 spatial, x4 temporal, 4 latent
    channels). Text encoder: the tiny Wan UMT5 (a T5-family encoder; d_model 32) with its local tokenizer.
    Call it with ``**default_call_kwargs("tiny-cogvideox")`` (``max_sequence_length=16``).

    Example::

        >>> pipe = tiny_cogvideox_pipeline(seed=0)
        >>> pipe("a cat", num_frames=9, height=64, width=64, num_inference_steps=2, max_sequence_length=16,
        ...      output_type="np").frames.shape
        (1, 9, 64, 64, 3)
    """
    return _tiny_cogvideox(seed)


def _tiny_cogvideox(seed: int, **transformer_overrides):
    """:func:`tiny_cogvideox_pipeline` with ``transformer_overrides`` replacing or adding transformer config entries
    (CogVideoX 1.5's temporal patch)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from diffusers import CogVideoXTransformer3DModel

    tokenizer, text_encoder = _wan_text_parts(seed)
    config = dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=COGVIDEOX_MAX_SEQUENCE_LENGTH,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
    )
    with _seeded(seed):
        transformer = CogVideoXTransformer3DModel(**{**config, **transformer_overrides}).eval()
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ).eval()
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())


def tiny_cogvideox15_pipeline(seed: int = 0):
    """A tiny random CogVideoX 1.5-style ``diffusers.CogVideoXPipeline``: :func:`tiny_cogvideox_pipeline` with a
    temporal patch of 2 (``patch_size_t=2``; the pipeline pads the latent frames to whole patches: 17 frames are 5
    latent frames, padded to 6, 3 token frames), sample size 32 latents (256 px). Call it with
    ``**default_call_kwargs("tiny-cogvideox1.5")``.

    Example::

        >>> pipe = tiny_cogvideox15_pipeline(seed=0)
        >>> pipe.transformer.config.patch_size_t
        2
    """
    # 1.5's pipeline crops its RoPE grid to sample_height / sample_width latents: 32 (256 px) as 1.5 runs above its
    # sample size
    return _tiny_cogvideox(seed, patch_size_t=2, sample_height=32, sample_width=32)


def tiny_ltx_pipeline(seed: int = 0):
    """A tiny random LTX-Video text-to-video ``diffusers.LTXPipeline`` (fp32, CPU, offline).

    Transformer: 2 layers, 2 heads x head_dim 16, patch 1 (the latent grid is the token grid), packed ``(B, S, C)``
    tokens. VAE: ``AutoencoderKLLTXVideo`` with 8 channels per level and two spatio-temporal downsamplings (x4
    spatial and temporal here; the real one is x32 / x8). Text encoder: the tiny Wan UMT5 with its local tokenizer.
    Call it with ``**default_call_kwargs("tiny-ltx")`` (``max_sequence_length=16``).

    Example::

        >>> pipe = tiny_ltx_pipeline(seed=0)
        >>> pipe("a cat", num_frames=9, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
        ...      output_type="np").frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from diffusers import LTXVideoTransformer3DModel

    tokenizer, text_encoder = _wan_text_parts(seed)
    with _seeded(seed):
        transformer = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
            cross_attention_dim=32, num_layers=2, caption_channels=32,
        ).eval()
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False,
        ).eval()
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=tokenizer, transformer=transformer)


def _gemma3_text_parts(seed: int):
    """A local word-level tokenizer with Gemma's special tokens at Gemma's ids (pad 0, eos 1, bos 2; the LTX-2
    pipelines pad on the left themselves) and a 2-layer ``Gemma3ForConditionalGeneration`` of width 32 (its vision
    tower is a 1-layer SigLIP the pipelines never call)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    tokenizer = _word_level_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], "<bos> $A", pad="<pad>", unk="<unk>",
                                      bos="<bos>", eos="<eos>")
    with _seeded(seed):
        text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=Gemma3TextConfig(vocab_size=72, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                         max_position_embeddings=256, sliding_window=64),
            vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=16, patch_size=4),
            mm_tokens_per_image=4,
        )).eval()
    return tokenizer, text_encoder


def _ltx2_components(seed: int, **transformer_overrides) -> dict[str, Any]:
    """The modules of the tiny LTX-2 pipelines (see :func:`tiny_ltx2_pipeline`); ``transformer_overrides`` go to
    ``LTX2VideoTransformer3DModel`` (e.g. ``perturbed_attn=True, gated_attn=True``: the LTX-2.3 blocks)."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer, text_encoder = _gemma3_text_parts(seed)
    text_width = text_encoder.config.text_config.hidden_size
    with _seeded(seed):
        # the pipeline stacks every hidden state of the text encoder (embeddings + each layer) for the connectors
        connectors = LTX2TextConnectors(
            caption_channels=text_width, text_proj_in_factor=text_encoder.config.text_config.num_hidden_layers + 1,
            video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
            video_connector_num_layers=1, video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
            causal_temporal_positioning=False, rope_type="split",
        ).eval()
        transformer = LTX2VideoTransformer3DModel(**{
            **dict(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
                   attention_head_dim=16, cross_attention_dim=32, audio_in_channels=4, audio_out_channels=4,
                   audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
                   num_layers=2, caption_channels=text_width, rope_double_precision=False, rope_type="split"),
            **transformer_overrides}).eval()
        vae = AutoencoderKLLTX2Video(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8), layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
            spatio_temporal_scaling=(True, True), decoder_spatio_temporal_scaling=(True, True),
            decoder_inject_noise=(False, False, False), downsample_type=("spatiotemporal", "spatiotemporal"),
            upsample_residual=(False, False), upsample_factor=(1, 1), timestep_conditioning=False, patch_size=1,
            patch_size_t=1, encoder_causal=True, decoder_causal=False,
        ).eval()
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
            resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
            mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
        ).eval()
        vocoder = LTX2Vocoder(
            in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins, hidden_channels=32,
            out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
        ).eval()
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
                tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder)


def tiny_ltx2_pipeline(seed: int = 0, **transformer_overrides):
    """A tiny random LTX-2 audio-video ``diffusers.LTX2Pipeline`` (fp32, CPU, offline).

    Transformer: 2 layers; video 2 heads x head_dim 16, audio 2 x 4; patch 1 (the latent grid is the token grid),
    split RoPE (``LTX2VideoTransformer3DModel``'s other options as Diffusers' fast test). Video VAE:
    ``AutoencoderKLLTX2Video`` with two spatio-temporal downsamplings (x4 spatial and temporal here; the real one is
    x32 / x8). Audio VAE and vocoder: Diffusers' fast-test sizes. Text: a 2-layer Gemma 3 (width 32) with a local
    word-level tokenizer and 1-layer text connectors. ``transformer_overrides``: more ``LTX2VideoTransformer3DModel``
    arguments (``perturbed_attn=True, gated_attn=True``: LTX-2.3's blocks). Call it with
    ``**default_call_kwargs("tiny-ltx2")`` (``max_sequence_length=16``; spatio-temporal guidance on block 1 of the 2,
    where the real default, block 28, does not exist).

    Example::

        >>> pipe = tiny_ltx2_pipeline(seed=0)
        >>> out = pipe("a cat", num_frames=9, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
        ...            spatio_temporal_guidance_blocks=[1], output_type="np")
        >>> out.frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import LTX2Pipeline

    return LTX2Pipeline(**_ltx2_components(seed, **transformer_overrides))


def tiny_ltx2_i2v_pipeline(seed: int = 0, **transformer_overrides):
    """A tiny random LTX-2 image-to-video ``diffusers.LTX2ImageToVideoPipeline``: the modules of
    :func:`tiny_ltx2_pipeline` (the image is encoded by the same video VAE into the first latent frame)."""
    from diffusers import LTX2ImageToVideoPipeline

    return LTX2ImageToVideoPipeline(**_ltx2_components(seed, **transformer_overrides))


def tiny_mochi_pipeline(seed: int = 0):
    """A tiny random Mochi text-to-video ``diffusers.MochiPipeline`` (fp32, CPU, offline).

    Transformer: 2 layers, 2 heads x head_dim 16, patch 2, joint ``[video, text]`` attention with separate text
    projections and a 16-token text (its attention mask drops the padding). VAE: ``AutoencoderKLMochi`` with 32
    channels per level (its GroupNorm needs 32) (x8 spatial, x6 temporal: frames of the form 6k + 1). Text encoder: the tiny Wan UMT5 with its
    local tokenizer. Call it with ``**default_call_kwargs("tiny-mochi")`` (``max_sequence_length=16``).

    Example::

        >>> pipe = tiny_mochi_pipeline(seed=0)
        >>> pipe("a cat", num_frames=13, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
        ...      output_type="latent").frames.shape
        torch.Size([1, 12, 3, 4, 4])
    """
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline
    from diffusers import MochiTransformer3DModel

    tokenizer, text_encoder = _wan_text_parts(seed)
    with _seeded(seed):
        transformer = MochiTransformer3DModel(
            patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=16,
            in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
            activation_fn="swiglu", max_sequence_length=16,
        ).eval()
        vae = AutoencoderKLMochi(
            latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        ).eval()
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                         tokenizer=tokenizer, transformer=transformer)


def tiny_wan_vace_pipeline(seed: int = 0):
    """A tiny random Wan VACE ``diffusers.WanVACEPipeline`` (fp32, CPU, offline): the tiny Wan text encoder, VAE and
    scheduler, and a ``WanVACETransformer3DModel`` of the tiny Wan size with one VACE block (``vace_layers=[0]``;
    control input: 16 x 2 latent + 64 mask channels = 96). Without ``video``/``mask`` it generates from text alone.
    Call it with ``**default_call_kwargs("tiny-wan-vace")``.

    Example::

        >>> pipe = tiny_wan_vace_pipeline(seed=0)
        >>> len(pipe.transformer.vace_blocks)
        1
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline, WanVACETransformer3DModel

    tokenizer, text_encoder = _wan_text_parts(seed)
    transformer = _wan_transformer(seed, cls=WanVACETransformer3DModel, vace_layers=[0], vace_in_channels=96)
    return WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=_wan_vae(seed),
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=_WAN_SCHEDULER_SHIFT),
                           transformer=transformer)


def tiny_wan22_vace_pipeline(seed: int = 0):
    """A tiny random Wan2.2 VACE-Fun A14B-style ``diffusers.WanVACEPipeline`` with two experts (fp32, CPU, offline):
    :func:`tiny_wan_vace_pipeline` plus ``transformer_2`` (the low-noise expert, its own random weights) and
    ``boundary_ratio=0.9``, as :func:`tiny_wan22_pipeline`. Call it with ``**default_call_kwargs("tiny-wan2.2-vace")``.

    Example::

        >>> pipe = tiny_wan22_vace_pipeline(seed=0)
        >>> pipe.config.boundary_ratio, len(pipe.transformer_2.vace_blocks)
        (0.9, 1)
    """
    from diffusers import WanVACETransformer3DModel

    pipe = tiny_wan_vace_pipeline(seed)
    transformer_2 = _wan_transformer(seed + 1, cls=WanVACETransformer3DModel, vace_layers=[0], vace_in_channels=96)
    return type(pipe)(**{**pipe.components, "transformer_2": transformer_2}, boundary_ratio=0.9)


def tiny_wan22_ti2v_pipeline(seed: int = 0):
    """A tiny random Wan2.2 TI2V-5B-style ``diffusers.WanPipeline`` (fp32, CPU, offline): per-token timesteps
    (``expand_timesteps=True``), a 48-channel residual ``AutoencoderKLWan`` with its own 2x2 patching (x16 spatial,
    x4 temporal), and a transformer with 48 input and output channels. Text parts as :func:`tiny_wan_pipeline`.
    Call it with ``**default_call_kwargs("tiny-wan2.2-ti2v")``; height/width multiples of 32.

    Example::

        >>> pipe = tiny_wan22_ti2v_pipeline(seed=0)
        >>> pipe.vae_scale_factor_spatial, pipe.config.expand_timesteps
        (16, True)
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer, text_encoder = _wan_text_parts(seed)
    with _seeded(seed):
        vae = AutoencoderKLWan(
            base_dim=12, decoder_base_dim=12, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
            scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
        ).eval()
    transformer = _wan_transformer(seed, in_channels=48, out_channels=48)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=_WAN_SCHEDULER_SHIFT), transformer=transformer,
                       expand_timesteps=True)


def _clip_image_processor():
    try:  # transformers >= 5: the PIL backend, which needs no torchvision
        from transformers import CLIPImageProcessorPil as _Proc
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor as _Proc
    return _Proc(crop_size=32, size=32)


def tiny_wan_i2v_pipeline(seed: int = 0):
    """A tiny random Wan2.1 image-to-video ``diffusers.WanImageToVideoPipeline`` (fp32, CPU, offline).

    Same text encoder, VAE and scheduler as :func:`tiny_wan_pipeline`; the transformer takes ``in_channels=36``
    (noise + image-condition latents + mask) and ``image_dim=4`` CLIP image embeddings from a tiny
    ``CLIPVisionModelWithProjection`` (hidden size 4, image size 32). ``added_kv_proj_dim`` is left ``None`` (as in
    Diffusers' fast test), so the image tokens are appended to the cross-attention keys instead of getting their own
    projections, and no 512-token text length is required: call with ``**default_call_kwargs("tiny-wan-i2v")``.

    Example::

        >>> import PIL.Image
        >>> pipe = tiny_wan_i2v_pipeline()
        >>> image = PIL.Image.new("RGB", (32, 32), "red")
        >>> pipe(image, "a dog running on the beach", num_frames=9, height=32, width=32, num_inference_steps=2,
        ...      max_sequence_length=16, output_type="np").frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tokenizer, text_encoder = _wan_text_parts(seed)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_wan_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=_WAN_SCHEDULER_SHIFT),
        image_processor=_clip_image_processor(),
        image_encoder=_wan_image_encoder(seed),
        transformer=_wan_transformer(seed, i2v=True),
        transformer_2=None,
    )


def _wan_image_encoder(seed: int):
    """The tiny CLIP vision encoder of the Wan-architecture I2V pipelines (hidden size 4 = the transformer's
    ``image_dim``, 32x32 images)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with _seeded(seed):
        return CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                intermediate_size=16, patch_size=1,
            )  # fmt: skip
        ).eval()


def _skyreels_v2_parts(seed: int, *, i2v: bool = False, **transformer_overrides) -> dict[str, Any]:
    """The components every tiny SkyReels-V2 pipeline shares: the tiny Wan text encoder and VAE, a
    ``SkyReelsV2Transformer3DModel`` with the tiny Wan config, and UniPC with flow sigmas (as the Hub checkpoints)."""
    from diffusers import SkyReelsV2Transformer3DModel, UniPCMultistepScheduler

    tokenizer, text_encoder = _wan_text_parts(seed)
    return dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_wan_vae(seed),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0),
        transformer=_wan_transformer(seed, i2v=i2v, cls=SkyReelsV2Transformer3DModel, **transformer_overrides),
    )


def tiny_skyreels_v2_pipeline(seed: int = 0):
    """A tiny random SkyReels-V2 text-to-video ``diffusers.SkyReelsV2Pipeline`` (fp32, CPU, offline): the tiny Wan
    text encoder and VAE, a 2-layer ``SkyReelsV2Transformer3DModel`` of the tiny Wan size, UniPC flow scheduler.
    Call it with ``**default_call_kwargs("tiny-skyreels-v2")`` (``max_sequence_length=16``).

    Example::

        >>> pipe = tiny_skyreels_v2_pipeline(seed=0)
        >>> type(pipe.transformer).__name__
        'SkyReelsV2Transformer3DModel'
    """
    from diffusers import SkyReelsV2Pipeline

    return SkyReelsV2Pipeline(**_skyreels_v2_parts(seed))


def tiny_skyreels_v2_i2v_pipeline(seed: int = 0):
    """A tiny random ``diffusers.SkyReelsV2ImageToVideoPipeline``: the parts of :func:`tiny_skyreels_v2_pipeline`
    with the tiny Wan I2V transformer config (36 input channels, CLIP image width 4, ``added_kv_proj_dim=None``) and
    the tiny CLIP vision encoder of :func:`tiny_wan_i2v_pipeline`."""
    from diffusers import SkyReelsV2ImageToVideoPipeline

    return SkyReelsV2ImageToVideoPipeline(**_skyreels_v2_parts(seed, i2v=True), image_encoder=_wan_image_encoder(seed),
                                          image_processor=_clip_image_processor())


def tiny_skyreels_v2_df_pipeline(seed: int = 0, **transformer_overrides):
    """A tiny random SkyReels-V2 diffusion-forcing ``diffusers.SkyReelsV2DiffusionForcingPipeline``; its components
    also build the DF image-to-video and video-to-video pipelines (``Cls(**pipe.components)``).
    ``transformer.config.num_frame_per_block`` starts at 1 (no block-causal mask); a call with
    ``causal_block_size=n`` rewrites it (the pipeline's ``_set_ar_attention``) and it stays so for later calls.

    Example::

        >>> pipe = tiny_skyreels_v2_df_pipeline(seed=0)
        >>> pipe.transformer.config.num_frame_per_block
        1
    """
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    return SkyReelsV2DiffusionForcingPipeline(**_skyreels_v2_parts(seed, **transformer_overrides))


def _clip_tokenizer():
    """A local stand-in for CLIP's tokenizer: WordLevel with CLIP's special tokens (start 0, pad 1, end 2), 77 tokens."""
    return _word_level_tokenizer(
        ["<|startoftext|>", "<pad>", "<|endoftext|>", "<unk>"], "<|startoftext|> $A <|endoftext|>", pad="<pad>",
        unk="<unk>", bos="<|startoftext|>", eos="<|endoftext|>", model_max_length=77,
    )


def _hunyuan_vae(seed: int):
    """``AutoencoderKLHunyuanVideo`` with 8 channels per level: x8 spatial, x4 temporal, 4 latent channels
    (HunyuanVideo's and Kandinsky 5's VAE)."""
    from diffusers import AutoencoderKLHunyuanVideo

    with _seeded(seed):
        return AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
            scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ).eval()  # fmt: skip


def tiny_hunyuan_pipeline(seed: int = 0):
    """A tiny random ``diffusers.HunyuanVideoPipeline`` (fp32, CPU, offline).

    Transformer: 1 dual-stream + 1 single-stream block + 1 refiner block, 2 heads x head_dim 10,
    ``rope_axes_dim=(2, 4, 4)``, patch 1 (RoPE is computed from the grid, so any frame count works), guidance
    embedding on. VAE: ``AutoencoderKLHunyuanVideo`` with 8 channels per level (x8 spatial, x4 temporal, 4 latent
    channels). Text encoders: 2-layer Llama (hidden 16) and CLIP text (hidden 8), each with a local WordLevel
    tokenizer. Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=7.0)`` as in Diffusers' tests.

    Must be called with ``prompt_template=HUNYUAN_PROMPT_TEMPLATE``; use ``**default_call_kwargs("tiny-hunyuan")``.
    Height/width must be multiples of 8, ``num_frames`` of the form ``4k + 1``.

    Example::

        >>> pipe = tiny_hunyuan_pipeline()
        >>> pipe("a bird flying over the sea", num_frames=9, height=32, width=32, num_inference_steps=2,
        ...      output_type="np", **default_call_kwargs("tiny-hunyuan")).frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from diffusers import HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = _word_level_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A", pad="<pad>", unk="<unk>", bos="<s>", eos="</s>"
    )
    tokenizer_2 = _clip_tokenizer()
    with _seeded(seed):
        text_encoder = LlamaModel(
            LlamaConfig(
                bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, hidden_act="gelu",
            )  # fmt: skip
        ).eval()
    with _seeded(seed):
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=8, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, hidden_act="gelu", projection_dim=32,
                max_position_embeddings=77,
            )  # fmt: skip
        ).eval()
    with _seeded(seed):
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        ).eval()  # fmt: skip
    vae = _hunyuan_vae(seed)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=_HUNYUAN_SCHEDULER_SHIFT),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


class _TinyModels(Mapping):
    """``TINY_MODELS[name]``: the builder of every registered family's tiny pipeline (``seed=`` -> pipeline), read
    live from the model-family registry (:func:`radial_diffusers.families.tiny_models`)."""

    def __getitem__(self, name: str) -> Callable[..., Any]:
        models = tiny_models()
        if name not in models:
            raise KeyError(name)
        return _resolve(models[name][1].builder)

    def __iter__(self):
        return iter(tiny_models())

    def __len__(self) -> int:
        return len(tiny_models())


TINY_MODELS: Mapping[str, Callable[..., Any]] = _TinyModels()


def _check_name(name: str) -> None:
    if name not in tiny_models():
        raise UnsupportedModelError(f"Unknown tiny model {name!r}; valid names: {', '.join(sorted(tiny_models()))}")


def cast_pipeline(pipe, dtype):
    """Cast every model of ``pipe`` to ``dtype`` the way ``from_pretrained(torch_dtype=dtype)`` loads it: modules named
    in a model's ``_keep_in_fp32_modules`` (Wan's norms, time embedder, modulation tables) stay float32 when
    ``dtype`` is a 16-bit type. Returns ``pipe``."""
    import torch

    half = dtype in (torch.float16, torch.bfloat16)
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        keep = set(getattr(component, "_keep_in_fp32_modules", None) or ())
        for mod_name, module in component.named_modules():
            # non-persistent buffers are not in a checkpoint: from_pretrained keeps them as __init__ made them
            # (Kandinsky 5's RoPE angle tables stay float32)
            buffers = [(k, b) for k, b in module._buffers.items() if k not in module._non_persistent_buffers_set]
            for key, t in [*module._parameters.items(), *buffers]:
                if t is None or not t.is_floating_point():
                    continue
                full = f"{mod_name}.{key}".split(".")
                target = torch.float32 if half and keep & set(full) else dtype
                if key in module._parameters:
                    t.data = t.data.to(target)
                else:
                    module._buffers[key] = t.to(target)
    return pipe


def load_tiny(name: str, seed: int = 0, dtype=None):
    """Build the tiny pipeline registered as ``name`` in :data:`TINY_MODELS` with random weights from ``seed``.

    ``dtype`` (default float32) casts it as ``from_pretrained(torch_dtype=dtype)`` would (:func:`cast_pipeline`).
    Raises ``ValueError`` (listing the valid names) for an unknown name.

    Example::

        >>> pipe = load_tiny("tiny-hunyuan", seed=1)
        >>> type(pipe).__name__
        'HunyuanVideoPipeline'
    """
    _check_name(name)
    pipe = get_tiny(name)[1].build(seed=seed)
    return cast_pipeline(pipe, dtype) if dtype is not None else pipe


def default_call_kwargs(name: str) -> dict[str, Any]:
    """The extra pipeline-call kwargs the tiny pipeline ``name`` needs (a fresh dict each call).

    * ``"tiny-wan"``, ``"tiny-wan-i2v"``: ``{"max_sequence_length": 16}``;
    * ``"tiny-hunyuan"``: ``{"prompt_template": {"template": "{}", "crop_start": 0}, "max_sequence_length": 16}``.

    Example::

        >>> default_call_kwargs("tiny-wan")
        {'max_sequence_length': 16}
    """
    _check_name(name)
    return get_tiny(name)[1].kwargs()


#: Text lengths of the tiny HunyuanVideo-1.5 pipelines, set on the built pipeline (see :func:`tiny_hunyuan15_pipeline`):
#: Qwen tokens after the template crop (``tokenizer_max_length``, real 1000), ByT5 glyph tokens
#: (``tokenizer_2_max_length``, real 256) and SigLIP image tokens (``vision_num_semantic_tokens``, real 729).
HUNYUAN15_TEXT_TOKENS = 16
HUNYUAN15_GLYPH_TOKENS = 8
HUNYUAN15_IMAGE_TOKENS = 4
#: ``target_size`` of the tiny HunyuanVideo-1.5 transformers: the image-to-video pipeline makes a square image
#: ``HUNYUAN15_TARGET_SIZE`` pixels square (it takes no height / width).
HUNYUAN15_TARGET_SIZE = 128

# Qwen2.5's chat format (ChatML), on the tiny vocabulary: "<|im_start|>role\ncontent<|im_end|>\n" per message
# (content as a string, or as a list of {"type": "text", "text": ...} parts: Cosmos 2.5 sends parts)
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_chat_tokenizer():
    """A local stand-in for the Qwen2 tokenizer: WordLevel over the tiny vocabulary, ChatML special tokens and a
    chat template (the pipeline encodes prompts with ``apply_chat_template``), padding on the right."""
    tokenizer = _word_level_tokenizer(
        ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"], "$A",
        pad="<|endoftext|>", unk="<unk>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


def _hunyuan15_components(seed: int, *, i2v: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler
    from diffusers import HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    tokenizer = _qwen_chat_tokenizer()
    with _seeded(seed):
        text_encoder = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=128, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
                rope_theta=1e6, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        ).eval()
    assert len(tokenizer) <= text_encoder.config.vocab_size
    with _seeded(seed):  # ByT5: 256 bytes + 3 specials + 125 sentinels = 384 ids
        text_encoder_2 = T5EncoderModel(
            T5Config(vocab_size=384, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        ).eval()
    with _seeded(seed):
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8,
            image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=HUNYUAN15_TARGET_SIZE,
            task_type="i2v" if i2v else "t2v",
        ).eval()  # fmt: skip
    with _seeded(seed):
        vae = AutoencoderKLHunyuanVideo15(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
            spatial_compression_ratio=16, temporal_compression_ratio=4,
        ).eval()  # fmt: skip
    components: dict[str, Any] = dict(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2,
        tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    if i2v:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        try:  # transformers >= 5: the PIL backend, which needs no torchvision
            from transformers import SiglipImageProcessorPil as _Proc
        except ImportError:  # pragma: no cover - transformers 4.x
            from transformers import SiglipImageProcessor as _Proc
        with _seeded(seed):  # 32x32 images in 16x16 patches: HUNYUAN15_IMAGE_TOKENS tokens of width 12
            components["image_encoder"] = SiglipVisionModel(
                SiglipVisionConfig(hidden_size=12, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=32, patch_size=16)
            ).eval()
        components["feature_extractor"] = _Proc(size={"height": 32, "width": 32})
    return components


def _shrink_hunyuan15_text(pipe):
    """Set the tiny text lengths on a built HunyuanVideo-1.5 pipeline (instance attributes; see the builders)."""
    pipe.tokenizer_max_length = HUNYUAN15_TEXT_TOKENS
    pipe.tokenizer_2_max_length = HUNYUAN15_GLYPH_TOKENS
    pipe.vision_num_semantic_tokens = HUNYUAN15_IMAGE_TOKENS
    # crop the rendered system message and the user header, as the real 108 does for Qwen2.5-VL's tokenizer
    prefix = f"<|im_start|>system\n{pipe.system_message}<|im_end|>\n<|im_start|>user\n"
    pipe.prompt_template_encode_start_idx = len(pipe.tokenizer(prefix, add_special_tokens=False).input_ids)
    return pipe


def tiny_hunyuan15_pipeline(seed: int = 0):
    """A tiny random ``diffusers.HunyuanVideo15Pipeline`` (HunyuanVideo-1.5 text-to-video; fp32, CPU, offline).

    Transformer: 2 dual-stream blocks + 1 refiner block, 2 heads x head_dim 8, ``rope_axes_dim=(2, 2, 4)``, patch 1,
    9 input channels (4 noise + 4 condition latents + 1 mask), ``target_size=128``. VAE: ``AutoencoderKLHunyuanVideo15``
    with 8 channels per level and the real compression (x16 spatial, x4 temporal, 4 latent channels). Text encoders:
    a 2-layer ``Qwen2_5_VLTextModel`` (hidden 16) with a local WordLevel tokenizer that has a ChatML chat template,
    and a 1-layer ByT5-sized ``T5EncoderModel`` (d_model 8) with ``ByT5Tokenizer()`` (no files). Guider:
    ``ClassifierFreeGuidance(guidance_scale=6.0)`` as the released checkpoints (classifier-free guidance is the
    guider's: the pipeline takes no ``guidance_scale``; change it with ``pipe.guider = pipe.guider.new(...)``).
    Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=5.0)`` (the 480p checkpoints' shift).

    The joint text is shrunk to a few dozen tokens by setting the pipeline's instance attributes
    ``tokenizer_max_length`` (16, :data:`HUNYUAN15_TEXT_TOKENS`), ``tokenizer_2_max_length`` (8),
    ``vision_num_semantic_tokens`` (4) and ``prompt_template_encode_start_idx`` (the tiny template's system prefix).
    These are set in ``__init__``, not saved by ``save_pretrained``: a pipeline loaded back with ``from_pretrained``
    has the real 1000 / 256 / 729 / 108 (it still runs, with a ~2000-token text) until they are set again.
    No extra call arguments are needed; ``num_frames`` of the form ``4k + 1``, height/width multiples of 16.

    Example::

        >>> pipe = tiny_hunyuan15_pipeline()
        >>> pipe("a bird flying over the sea", num_frames=9, height=32, width=32, num_inference_steps=2,
        ...      output_type="np").frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import HunyuanVideo15Pipeline

    return _shrink_hunyuan15_text(HunyuanVideo15Pipeline(**_hunyuan15_components(seed, i2v=False)))


def tiny_hunyuan15_i2v_pipeline(seed: int = 0):
    """A tiny random ``diffusers.HunyuanVideo15ImageToVideoPipeline`` (HunyuanVideo-1.5 image-to-video; fp32, CPU,
    offline): the parts of :func:`tiny_hunyuan15_pipeline` (same text-length attributes, not saved either) plus a
    1-layer ``SiglipVisionModel`` (hidden 12 = the transformer's ``image_embed_dim``; 32x32 images in 16x16 patches:
    4 image tokens) and its ``SiglipImageProcessor`` (PIL backend where available).

    The pipeline takes no ``height`` / ``width``: it picks the bucket of ``target_size`` (128) closest to the image's
    aspect ratio, so a square image gives a 128x128 video (latent 8x8).

    Example::

        >>> import PIL.Image
        >>> pipe = tiny_hunyuan15_i2v_pipeline()
        >>> pipe(PIL.Image.new("RGB", (64, 64), "red"), "a dog running on the beach", num_frames=9,
        ...      num_inference_steps=2, output_type="np").frames.shape
        (1, 9, 128, 128, 3)
    """
    from diffusers import HunyuanVideo15ImageToVideoPipeline

    return _shrink_hunyuan15_text(HunyuanVideo15ImageToVideoPipeline(**_hunyuan15_components(seed, i2v=True)))


def _qwen25_vl_text_parts(seed: int):
    """The tiny ``Qwen2_5_VLForConditionalGeneration`` (2 text layers, hidden 16; Kandinsky 5, Cosmos-Predict2.5)
    and its local ChatML tokenizer. The vision tower is never run (the pipelines encode text only) but is part of the
    class."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _qwen_chat_tokenizer()
    special = tokenizer.convert_tokens_to_ids
    with _seeded(seed):
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config=dict(vocab_size=128, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, rope_theta=1e6,
                                 rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
                                 bos_token_id=None, eos_token_id=special("<|im_end|>"),
                                 pad_token_id=tokenizer.pad_token_id),
                vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
                vocab_size=128, image_token_id=124, video_token_id=125, vision_start_token_id=126,
                vision_end_token_id=127,
            )  # fmt: skip
        ).eval()
    assert len(tokenizer) <= 124  # the image / video / vision special ids above stay outside the vocabulary
    return tokenizer, text_encoder


def _kandinsky5_components(seed: int, **transformer_overrides) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5Transformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, text_encoder = _qwen25_vl_text_parts(seed)
    tokenizer_2 = _clip_tokenizer()
    with _seeded(seed):
        text_encoder_2 = CLIPTextModel(
            CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=8, intermediate_size=16,
                           num_attention_heads=2, num_hidden_layers=1, vocab_size=128, projection_dim=8,
                           max_position_embeddings=77)
        ).eval()
    with _seeded(seed):
        transformer = Kandinsky5Transformer3DModel(**{
            **dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
                   model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
                   visual_cond=True),
            **transformer_overrides,
        }).eval()  # fmt: skip
        # Kandinsky zero-initializes its modulation (shift, scale and gate of every block): with those zeros each
        # attention's output is multiplied by a zero gate and the model ignores attention. Random ones, as trained.
        for name, param in transformer.named_parameters():
            if "modulation" in name:
                torch.nn.init.normal_(param, std=0.2)
    vae = _hunyuan_vae(seed)
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))


def _crop_kandinsky5_template(pipe):
    """Set the template crop of a built Kandinsky 5 pipeline to the tiny tokenizer's count of the template's system
    message and user header (the real 128 counts Qwen2.5-VL's tokens): an instance attribute, see the builders."""
    prefix = pipe.prompt_template.split("{}")[0]
    pipe.prompt_template_encode_start_idx = len(pipe.tokenizer(prefix, add_special_tokens=False).input_ids)
    return pipe


def tiny_kandinsky5_pipeline(seed: int = 0, **transformer_overrides):
    """A tiny random ``diffusers.Kandinsky5T2VPipeline`` (Kandinsky 5.0 Video text-to-video; fp32, CPU, offline).

    Transformer: 1 text block and 2 visual blocks, model dim 32, 2 heads x head_dim 16 (``axes_dims=(4, 6, 6)``),
    patch ``(1, 2, 2)``, ``visual_cond=True`` and ``attention_type="regular"`` as the 5-second Lite checkpoints
    (``transformer_overrides``: more ``Kandinsky5Transformer3DModel`` arguments, e.g. the NABLA settings of the Pro
    and 10-second checkpoints). VAE: ``AutoencoderKLHunyuanVideo`` with 8 channels per level (x8 spatial, x4 temporal,
    4 latent channels). Text encoders: a 2-layer ``Qwen2_5_VLForConditionalGeneration`` (hidden 16) with a local
    WordLevel ChatML tokenizer, and a 1-layer ``CLIPTextModel`` (hidden 8) with a local WordLevel tokenizer.
    Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=5.0)``.

    Call it with ``max_sequence_length=32`` (``**default_call_kwargs("tiny-kandinsky5")``). The builder sets
    ``prompt_template_encode_start_idx`` (the template crop, real 128) to the tiny tokenizer's count; it is an
    instance attribute set in ``__init__``, not saved by ``save_pretrained``: a pipeline loaded back has the real
    128 again, which crops a short prompt away entirely (the call then fails on an empty text); set
    ``prompt_template_encode_start_idx`` on it again. ``num_frames`` of the form ``4k + 1``, height/width multiples
    of 16.

    Example::

        >>> pipe = tiny_kandinsky5_pipeline()
        >>> pipe("a bird flying over the sea", num_frames=9, height=32, width=32, num_inference_steps=2,
        ...      output_type="np", max_sequence_length=32).frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import Kandinsky5T2VPipeline

    return _crop_kandinsky5_template(Kandinsky5T2VPipeline(**_kandinsky5_components(seed, **transformer_overrides)))


def tiny_kandinsky5_i2v_pipeline(seed: int = 0, **transformer_overrides):
    """A tiny random ``diffusers.Kandinsky5I2VPipeline`` (Kandinsky 5.0 Video image-to-video; fp32, CPU, offline):
    the parts of :func:`tiny_kandinsky5_pipeline` (the same template crop, not saved either). The pipeline encodes
    the image with the VAE into the first latent frame of the noise, and with ``visual_cond`` passes zero condition
    latents and a mask of 1 on that frame. It needs 17 frames or more: it normalises its first 4 latent frames by the
    ones after them (with fewer its video is NaN).

    Example::

        >>> import PIL.Image
        >>> pipe = tiny_kandinsky5_i2v_pipeline()
        >>> pipe(PIL.Image.new("RGB", (32, 32), "red"), "a dog running on the beach", num_frames=17, height=32,
        ...      width=32, num_inference_steps=2, output_type="np", max_sequence_length=32).frames.shape
        (1, 17, 32, 32, 3)
    """
    from diffusers import Kandinsky5I2VPipeline

    return _crop_kandinsky5_template(Kandinsky5I2VPipeline(**_kandinsky5_components(seed, **transformer_overrides)))


#: Text length to pass as ``max_sequence_length`` to the tiny Cosmos-Predict2 pipeline (T5 tokens). The tiny
#: Cosmos-Predict2.5 pipeline takes 32: its chat template's system message fills the first 18 tokens.
COSMOS_MAX_SEQUENCE_LENGTH = 16


def _cosmos_transformer(seed: int, **overrides):
    """The tiny ``CosmosTransformer3DModel``: 2 blocks, 2 heads x head_dim 16, patch ``(1, 2, 2)``, 16 latent channels +
    the condition-mask channel, the released checkpoints' ``max_size=(128, 240, 240)`` (128 latent frames: 509 video
    frames) and Predict2-2B's ``rope_scale=(1, 3, 3)``. ``concat_padding_mask=False``, unlike the released
    checkpoints: their padding-mask channel is resized with torchvision, which the tiny models do not need (the
    channel is all zeros in the pipelines' calls, and attention never sees it)."""
    from diffusers import CosmosTransformer3DModel

    config = dict(
        in_channels=16 + 1, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(128, 240, 240), patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=False, extra_pos_embed_type=None,
    )  # fmt: skip
    config.update(overrides)
    with _seeded(seed):
        return CosmosTransformer3DModel(**config).eval()


def _cosmos_t5(seed: int):
    """The tiny Cosmos T5 text encoder (2 layers, d_model 32 = the tiny transformer's text width) and its tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = _word_level_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", pad="<pad>", unk="<unk>", eos="</s>")
    with _seeded(seed):
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        ).eval()
    return tokenizer, text_encoder


def tiny_cosmos2_pipeline(seed: int = 0):
    """A tiny random ``diffusers.Cosmos2VideoToWorldPipeline`` (Cosmos-Predict2 video-to-world: a video from an image
    or the frames of a video; fp32, CPU, offline).

    Transformer: :func:`_cosmos_transformer`. VAE: the tiny Wan VAE (x8 spatial, x4 temporal). Text encoder: a 2-layer
    ``T5EncoderModel`` (d_model 32) with a local WordLevel tokenizer. Scheduler:
    ``FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)`` as the released checkpoints. Safety checker:
    :class:`~radial_diffusers._guardrail.PassThroughGuardrail` (the pipeline refuses to run without one).

    Call it with ``max_sequence_length=16`` (``**default_call_kwargs("tiny-cosmos2")``) and an ``image``;
    ``num_frames`` of the form ``4k + 1``, height/width multiples of 16.

    Example::

        >>> import PIL.Image
        >>> pipe = tiny_cosmos2_pipeline()
        >>> pipe(image=PIL.Image.new("RGB", (32, 32), "red"), prompt="a car on the street", num_frames=9, height=32,
        ...      width=32, num_inference_steps=2, output_type="np", max_sequence_length=16).frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    from ._guardrail import PassThroughGuardrail

    tokenizer, text_encoder = _cosmos_t5(seed)
    return Cosmos2VideoToWorldPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=_cosmos_transformer(seed), vae=_wan_vae(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=PassThroughGuardrail(),
    )


def tiny_cosmos1_pipeline(seed: int = 0):
    """A tiny random ``diffusers.CosmosTextToWorldPipeline`` (Cosmos 1.0 Diffusion text-to-world; fp32, CPU, offline).

    Transformer: :func:`_cosmos_transformer` as Cosmos 1.0's: 16 input channels (no condition mask), the learnable
    position embedding (``max_size`` 128 latent frames, 240 pixels a side) and ``rope_scale=(2, 1, 1)``. VAE:
    ``AutoencoderKLCosmos`` with 8 channels per level and the released compression (x8 spatial, x8 temporal, 16
    latent channels, Haar patches of 4). Text encoder: the 2-layer ``T5EncoderModel`` of :func:`tiny_cosmos2_pipeline`.
    Scheduler: the released ``EDMEulerScheduler`` (Karras sigmas 0.002 to 80, epsilon). Safety checker:
    :class:`~radial_diffusers._guardrail.PassThroughGuardrail`.

    Call it with ``max_sequence_length=16`` (``**default_call_kwargs("tiny-cosmos1")``); ``num_frames`` of the form
    ``8k + 1``, height/width multiples of 16.

    Example::

        >>> pipe = tiny_cosmos1_pipeline()
        >>> pipe(prompt="a car on the street", num_frames=17, height=32, width=32, num_inference_steps=2,
        ...      output_type="np", max_sequence_length=16).frames.shape
        (1, 17, 32, 32, 3)
    """
    from diffusers import AutoencoderKLCosmos, CosmosTextToWorldPipeline, EDMEulerScheduler

    from ._guardrail import PassThroughGuardrail

    tokenizer, text_encoder = _cosmos_t5(seed)
    transformer = _cosmos_transformer(seed, in_channels=16, max_size=(128, 240, 240), rope_scale=(2.0, 1.0, 1.0),
                                      extra_pos_embed_type="learnable")
    with torch.no_grad():  # Cosmos 1.0's learnable position embedding starts at zero; random ones, as trained
        for param in transformer.learnable_pos_embed.parameters():
            param.normal_(generator=torch.Generator().manual_seed(seed))
    with _seeded(seed):
        vae = AutoencoderKLCosmos(
            in_channels=3, out_channels=3, latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8),
            decode_block_out_channels=(8, 8, 8, 8), attention_resolutions=(8,), resolution=64, num_layers=1,
            patch_size=4, patch_type="haar", scaling_factor=1.0, spatial_compression_ratio=8,
            temporal_compression_ratio=8,
        ).eval()  # fmt: skip
    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                  num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                  final_sigmas_type="sigma_min")
    return CosmosTextToWorldPipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                     scheduler=scheduler, safety_checker=PassThroughGuardrail())


def tiny_cosmos25_pipeline(seed: int = 0):
    """A tiny random ``Cosmos2_5_PredictBasePipeline`` (Cosmos-Predict2.5: text-to-world without an ``image`` or
    ``video``; fp32, CPU, offline).

    Transformer: :func:`_cosmos_transformer` with the released cross-attention projection
    (``use_crossattn_projection``: the text encoder's layers concatenated, 2 x 16 here, projected to 32). VAE: the tiny
    Wan VAE. Text encoder: a 2-layer ``Qwen2_5_VLForConditionalGeneration`` (hidden 16) with a local WordLevel
    tokenizer that has a ChatML chat template. Scheduler: ``UniPCMultistepScheduler`` with the released flow sigmas
    (Karras, 0.01 to 200). Safety checker: :class:`~radial_diffusers._guardrail.PassThroughGuardrail`.

    Call it with ``max_sequence_length=32`` (``**default_call_kwargs("tiny-cosmos2.5")``: the chat template's system
    message takes the first 18 tokens, the prompt follows); ``num_frames`` of the form
    ``4k + 1``, height/width multiples of 16. (Its image-to-world mode converts the image with torchvision, which the
    tiny models do not need; text-to-world and video-to-world run without it.)

    Example::

        >>> pipe = tiny_cosmos25_pipeline()
        >>> pipe(prompt="a car on the street", num_frames=9, height=32, width=32, num_inference_steps=2,
        ...      output_type="np", max_sequence_length=32).frames.shape
        (1, 9, 32, 32, 3)
    """
    from diffusers import UniPCMultistepScheduler
    from diffusers.pipelines.cosmos.pipeline_cosmos2_5_predict import Cosmos2_5_PredictBasePipeline

    from ._guardrail import PassThroughGuardrail

    tokenizer, text_encoder = _qwen25_vl_text_parts(seed)
    transformer = _cosmos_transformer(seed, use_crossattn_projection=True, crossattn_proj_in_channels=2 * 16,
                                      encoder_hidden_states_channels=32)
    scheduler = UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True,
                                        prediction_type="flow_prediction", sigma_max=200.0, sigma_min=0.01)
    return Cosmos2_5_PredictBasePipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                         vae=_wan_vae(seed), scheduler=scheduler,
                                         safety_checker=PassThroughGuardrail())
