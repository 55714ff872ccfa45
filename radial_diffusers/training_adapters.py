"""The family-specific half of LoRA training: how a family's pipeline encodes a clip, and how its transformer is
called in a training step. ``lora_training`` holds the loop, the noise schedule and the loss; it reaches these
through the model-family registry (``ModelFamily.training``), so it has no per-family branch.

An adapter is built once per run from the loaded pipeline (:meth:`TrainingAdapter.for_pipeline`). It

* encodes one clip into the tensors the cache stores (:meth:`encode_text`, :meth:`encode_video`,
  :meth:`encode_condition` for image-to-video), per sample, without a batch dim;
* runs the transformer on a noisy latent (:meth:`predict`): the latent goes in and the prediction comes back in
  the cache's layout ``(B, C, F', H', W')``, whatever layout the model takes (CogVideoX ``(B, F, C, H, W)``,
  LTX-Video packed tokens);
* names the transformer it trains (:attr:`transformer`): with two experts (Wan2.2 A14B), the one ``expert`` picks,
  and the noise levels that expert sees in the pipeline (:meth:`noise_range`).

Cache keys (per sample): ``latents`` ``(C, F', H', W')`` float32 as the denoiser sees them (normalised as the
pipeline un-normalises before decoding); ``prompt_embeds`` ``(L, D)``; optional ``prompt_mask`` ``(L,)`` int64,
``pooled`` ``(D2,)``, ``prompt_embeds_2`` / ``prompt_mask_2`` (a second text encoder); image-to-video:
``condition`` and ``image_embeds``.

Example:
    >>> from radial_diffusers.tiny import load_tiny
    >>> from radial_diffusers.training_adapters import TrainingAdapter
    >>> adapter = TrainingAdapter.for_pipeline(load_tiny("tiny-wan"))
    >>> type(adapter).__name__, adapter.default_text_length()
    ('WanTraining', 512)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["TrainingAdapter", "TrainingOptions", "WanTraining", "HunyuanVideoTraining", "CogVideoXTraining",
           "LTXVideoTraining", "MochiTraining", "SkyReelsV2Training", "HunyuanVideo15Training", "Kandinsky5Training",
           "EXPERT_NAMES", "lora_load_hint"]

#: The ``expert`` a two-expert pipeline (Wan2.2 A14B) trains: the pipeline attribute holding it. Diffusers runs
#: ``transformer`` for ``t >= boundary_ratio * num_train_timesteps`` (high noise), ``transformer_2`` below.
EXPERT_NAMES = {"high_noise": "transformer", "low_noise": "transformer_2"}


def lora_load_hint(pipe, expert: str | None = None) -> str:
    """How to load a LoRA trained for ``expert`` (``None``: the only transformer) into ``pipe`` (an instance or its
    class): ``pipe.load_lora_weights``, or the transformer's ``load_lora_adapter`` where the pipeline has no LoRA loader
    (HunyuanVideo-1.5 in Diffusers 0.42)."""
    if not hasattr(pipe, "load_lora_weights"):
        return "pipe.transformer.load_lora_adapter(dir, prefix='transformer', use_safetensors=True)"
    if expert is not None and EXPERT_NAMES.get(expert) == "transformer_2":
        return "pipe.load_lora_weights(dir, load_into_transformer_2=True)"
    return "pipe.load_lora_weights(dir)"


@dataclass(frozen=True)
class TrainingOptions:
    """What a training step needs beyond the pipeline: the clip geometry in pixels / frames, the frame rate the
    clips were sampled at (``None``: the family's default), HunyuanVideo's embedded guidance, the expert to train."""

    num_frames: int
    height: int
    width: int
    fps: float | None = None
    guidance: float = 6.0
    expert: str | None = None


def training_refusal(family, variant, pipeline: str, image_to_video: bool, *, loaded: bool = True) -> str | None:
    """Why LoRA training cannot take a ``pipeline`` (class name; the model's name before it loads, ``loaded=False``)
    of ``family`` / ``variant`` (``None`` for the family itself), or ``None`` if it can: a family or variant without
    the ``training`` feature, a pipeline class its adapter does not train (known once loaded), or an image-to-video
    pipeline its adapter cannot condition. Also checked before a model loads where its family is known then."""
    from .families import _resolve, families

    features, label = (variant.features, variant.label) if variant is not None else (family.features, family.label)
    if "training" not in features or family.training is None:
        trainable = [f.label for f in families() if "training" in f.features]
        trainable += [v.label for f in families() for v in f.variants if "training" in v.features]
        return (f"model: LoRA training does not support {label} ({pipeline}) yet; it supports "
                f"{', '.join(trainable)} (inference works with radial-diffusers generate)")
    adapter = _resolve(family.training)
    if loaded and adapter.pipelines is not None and pipeline not in adapter.pipelines:
        return (f"model: LoRA training of {label} supports {', '.join(adapter.pipelines)}, not {pipeline} "
                f"({adapter.pipelines_why})")
    if image_to_video and not adapter.image_to_video:
        return (f"model: LoRA training of {label} supports text-to-video only, not {pipeline}; train the "
                "text-to-video pipeline's transformer (the same weights serve both where the family shares them)")
    return None


class TrainingAdapter:
    """Base adapter: a ``WanPipeline``-shaped family (T5-style ``encode_prompt``, latents ``(z - mean) / std``, the
    transformer called on ``(B, C, F, H, W)`` with ``encoder_hidden_states``). Subclasses override what differs.

    Class attributes:
        text_length: the pipeline's default ``max_sequence_length`` (``None``: the transformer's config decides).
        image_to_video: whether image-to-video pipelines of the family can be trained (the condition is encoded).
        pipelines: the pipeline class names the adapter trains (``None``: every pipeline of the family), and
            ``pipelines_why``: why the others are not (the refusal says it).
    """

    text_length: int | None = 512
    image_to_video: bool = False
    pipelines: tuple[str, ...] | None = None
    pipelines_why: str = ""

    def __init__(self, pipe, options: TrainingOptions):
        self.pipe = pipe
        self.options = options
        self.expert_attr = self._expert_attr(options.expert)

    @staticmethod
    def for_pipeline(pipe, options: TrainingOptions | None = None) -> "TrainingAdapter":
        """The adapter of ``pipe``'s family (its registry entry's ``training``). Raises :class:`ConfigError` for a
        family without training support, or an image-to-video pipeline its adapter cannot condition."""
        from .families import _resolve
        from .pipelines import detect_family, is_image_to_video

        family = detect_family(pipe)
        refusal = training_refusal(family, family.variant_for(pipe, pipe.transformer), type(pipe).__name__,
                                   is_image_to_video(pipe))
        if refusal is not None:
            raise ConfigError(refusal)
        if options is None:
            options = TrainingOptions(num_frames=17, height=64, width=64)
        return _resolve(family.training)(pipe, options)

    # -- which transformer ------------------------------------------------------------------------------------------
    def _expert_attr(self, expert: str | None) -> str:
        two = getattr(self.pipe, "transformer_2", None) is not None
        if expert is None:
            if two:
                raise ConfigError(
                    f"expert: {type(self.pipe).__name__} has two experts (transformer for high noise, transformer_2 "
                    f"for low noise, split at boundary_ratio {self._boundary()}); train one at a time: set "
                    "expert: high_noise or expert: low_noise")
            return "transformer"
        if expert not in EXPERT_NAMES:
            raise ConfigError(f"expert: must be one of {', '.join(EXPERT_NAMES)} or null, got {expert!r}")
        if not two:
            raise ConfigError(f"expert: {type(self.pipe).__name__} has one transformer (no transformer_2): drop "
                              f"expert: {expert}")
        return EXPERT_NAMES[expert]

    @property
    def transformer(self):
        """The transformer this run trains (``pipe.transformer``, or the chosen expert)."""
        return getattr(self.pipe, self.expert_attr)

    @property
    def preset(self) -> str:
        """The radial preset of the pipeline: its variant's (``"wan2.2"``, told from the pipeline, which a bare
        expert cannot tell) or its family's."""
        from .pipelines import detect_family

        family = detect_family(self.pipe)
        return family.preset_for(self.pipe, self.pipe.transformer)

    def _boundary(self) -> float | None:
        config = getattr(self.pipe, "config", None) or {}
        value = config.get("boundary_ratio")
        return None if value is None else float(value)

    def noise_range(self) -> tuple[float, float]:
        """``(lo, hi)``: the noise levels (flow-matching sigma in [0, 1]) the trained transformer sees in the
        pipeline: everything for a single transformer; ``[boundary, 1]`` for the high-noise expert and
        ``[0, boundary)`` for the low-noise one (``t >= boundary_ratio * 1000`` runs ``transformer``)."""
        if self.options.expert is None:
            return 0.0, 1.0
        boundary = self._boundary()
        if boundary is None:
            raise ConfigError("expert: the pipeline has two experts but no boundary_ratio in its config")
        return (boundary, 1.0) if self.options.expert == "high_noise" else (0.0, boundary)

    def noise_levels(self, draw: Callable[[int], torch.Tensor], shape: torch.Size,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The noise levels of a training step on latents of ``shape`` ``(B, C, F', H', W')``: ``(B,)``, one per
        sample, by default; ``(B, F')`` for a transformer that takes one per latent frame (diffusion forcing).
        ``draw(n)``: ``n`` independent levels (float32, in :meth:`noise_range`); ``generator``: the step's CPU
        generator, for any other draw."""
        return draw(shape[0])

    def render_kwargs(self) -> dict:
        """What the pipeline's call needs, beyond the prompt and geometry, to render as this run trains (training
        validation): the frame rate of a pipeline that conditions on one. Nothing by default."""
        return {}

    def load_hint(self) -> str:
        """How to load the exported LoRA into the pipeline."""
        return lora_load_hint(self.pipe, self.options.expert)

    # -- encoding ---------------------------------------------------------------------------------------------------
    def default_text_length(self) -> int:
        return int(self.text_length)

    @torch.no_grad()
    def encode_text(self, caption: str, kwargs: dict, device) -> dict[str, torch.Tensor]:
        embeds, _ = self.pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, device=device,
                                            max_sequence_length=kwargs["max_sequence_length"])
        return {"prompt_embeds": embeds[0]}

    def _vae_latents(self, frames: torch.Tensor, device) -> torch.Tensor:
        """uint8 ``(F, H, W, 3)`` -> the VAE's raw latent mode ``(1, C, F', H', W')`` float32."""
        vae = self.pipe.vae
        video = frames.permute(3, 0, 1, 2)[None].to(device=device, dtype=torch.float32) / 127.5 - 1.0
        return vae.encode(video.to(vae.dtype)).latent_dist.mode().float()

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents ``(B, C, F', H', W')`` -> what the denoiser sees (Wan: ``(z - mean) / std``)."""
        config = self.pipe.vae.config
        mean = torch.tensor(config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
        return (z - mean) / std

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, device) -> torch.Tensor:
        """uint8 ``(F, H, W, 3)`` -> normalised latents ``(C, F', H', W')`` float32."""
        return self.normalise(self._vae_latents(frames, device))[0]

    def encode_condition(self, frames: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """Image-to-video conditions from the clip's first frame (families with ``image_to_video``)."""
        raise NotImplementedError

    # -- the training step ------------------------------------------------------------------------------------------
    def predict(self, transformer, noisy: torch.Tensor, timestep: torch.Tensor, batch: dict, device,
                dtype: torch.dtype) -> torch.Tensor:
        """The model's prediction for ``noisy`` ``(B, C, F', H', W')`` at ``timestep`` ``(B,)`` or, from
        :meth:`noise_levels`, ``(B, F')`` (in the scheduler's units), in the same layout as ``noisy``. ``batch``: the
        collated cache batch; ``dtype``: the base weights'."""
        kwargs = self.model_kwargs(batch, device, dtype)
        kwargs.update(timestep=timestep, return_dict=False)
        x = self.model_input(noisy, batch, device)
        out = transformer(x.to(dtype), **kwargs)
        # a tuple, or the tensor itself (Kandinsky5Transformer3DModel with return_dict=False)
        return self.model_output(out[0] if isinstance(out, tuple) else out, noisy)

    def model_kwargs(self, batch: dict, device, dtype: torch.dtype) -> dict:
        """The forward's conditioning arguments from a cache batch (text, masks, image embeddings)."""
        return {"encoder_hidden_states": batch["prompt_embeds"].to(device, dtype)}

    def model_input(self, noisy: torch.Tensor, batch: dict, device) -> torch.Tensor:
        """The latent argument from the noisy latent ``(B, C, F', H', W')`` (float32)."""
        return noisy

    def model_output(self, out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The forward's output back in the cache's layout (``like``: the noisy latent)."""
        return out


class WanTraining(TrainingAdapter):
    """Wan2.1 / Wan2.2 (T2V, I2V, both A14B experts, TI2V-5B's text-to-video) and anything with a ``WanPipeline``
    shape. Image-to-video: the first-frame condition latents and mask concatenated on the channels, and the CLIP
    image embeddings where the transformer takes them (Wan2.1 I2V; Wan2.2 I2V has no image encoder)."""

    image_to_video = True

    @torch.no_grad()
    def encode_condition(self, frames: torch.Tensor, device) -> dict[str, torch.Tensor]:
        from PIL import Image

        pipe, o = self.pipe, self.options
        if (pipe.config or {}).get("expand_timesteps"):
            raise ConfigError("model: Wan2.2 TI2V-5B image-to-video conditions by replacing the first latent frame; "
                              "LoRA training supports its text-to-video mode (WanPipeline)")
        image = Image.fromarray(frames[0].cpu().numpy())
        pixels = pipe.video_processor.preprocess(image, height=o.height, width=o.width).to(device, torch.float32)
        _, condition = pipe.prepare_latents(pixels, 1, pipe.vae.config.z_dim, o.height, o.width, o.num_frames,
                                            torch.float32, device, None)
        out = {"condition": condition[0].float()}
        if getattr(pipe, "image_encoder", None) is not None and self.transformer.config.image_dim is not None:
            out["image_embeds"] = pipe.encode_image(image, device)[0].float()
        return out

    def model_input(self, noisy, batch, device):
        if "condition" in batch:
            return torch.cat([noisy, batch["condition"].to(device, torch.float32)], dim=1)
        return noisy

    def model_kwargs(self, batch, device, dtype):
        kwargs = super().model_kwargs(batch, device, dtype)
        if "image_embeds" in batch:
            kwargs["encoder_hidden_states_image"] = batch["image_embeds"].to(device, dtype)
        return kwargs


class SkyReelsV2Training(WanTraining):
    """SkyReels-V2: ``SkyReelsV2Pipeline`` and ``SkyReelsV2ImageToVideoPipeline`` call their transformer as Wan2.1's
    pipelines do (the same text, latents and image-to-video condition). The diffusion-forcing pipelines
    (``SkyReelsV2DiffusionForcing*Pipeline``) call it with one timestep per latent frame
    (``enable_diffusion_forcing=True``) and the frame-rate class (``fps``: 0 for 16 fps clips, else 1, as the
    pipelines map it). Their training draws, per sample, either one noise level for every frame (half the samples:
    the synchronous steps, ``ar_step=0``, the pipelines' default and how one long window runs) or one level per
    causal block of frames (``transformer.config.num_frame_per_block``, 1 in the released checkpoints) sorted so that
    later frames are never less noisy: the non-decreasing schedule of SkyReels-V2's diffusion forcing
    (arXiv 2504.13074), which covers the clean history frames of long-video extension and the asynchronous steps.

    The diffusion-forcing image-to-video pipeline conditions by clean prefix frames, not the I2V model's channels:
    train its transformer through ``SkyReelsV2DiffusionForcingPipeline`` (the same weights)."""

    #: the share of diffusion-forcing samples drawn synchronously (one level for every frame)
    synchronous_share = 0.5

    def __init__(self, pipe, options: TrainingOptions):
        from .pipelines import is_image_to_video

        super().__init__(pipe, options)
        name = type(pipe).__name__
        self.diffusion_forcing = name.startswith("SkyReelsV2DiffusionForcing")
        if self.diffusion_forcing and is_image_to_video(pipe):
            raise ConfigError(f"model: LoRA training of SkyReels-V2 diffusion forcing runs through "
                              f"SkyReelsV2DiffusionForcingPipeline, not {name}: load the same checkpoint as "
                              "SkyReelsV2DiffusionForcingPipeline (its per-frame noise levels include the clean "
                              "first frames image-to-video conditions on); the LoRA loads into either pipeline")
        frames = (options.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        if self.diffusion_forcing and frames % self._per_block():
            raise ConfigError(
                f"num_frames: {options.num_frames} frames are {frames} latent frames, not a multiple of the "
                f"transformer's num_frame_per_block ({self._per_block()}, its block-causal frame mask); pick "
                f"num_frames so that (num_frames - 1) // {pipe.vae_scale_factor_temporal} + 1 is one")

    def _per_block(self) -> int:
        return max(1, int(getattr(self.transformer.config, "num_frame_per_block", 1) or 1))

    def noise_levels(self, draw, shape, generator=None):
        if not self.diffusion_forcing:
            return super().noise_levels(draw, shape, generator)
        b, frames = shape[0], shape[2]
        per_block = self._per_block()
        levels = draw(b * (frames // per_block)).view(b, -1).sort(dim=1).values.repeat_interleave(per_block, dim=1)
        synchronous = torch.rand(b, generator=generator) < self.synchronous_share
        return torch.where(synchronous[:, None], draw(b)[:, None].expand(b, frames), levels)

    def predict(self, transformer, noisy, timestep, batch, device, dtype):
        # Diffusers adds the frame-rate embedding of a (B, F) timestep tiled in the wrong order for B > 1 (its
        # repeat(F, 1, 1) on (B, 6, D)): such a batch runs one sample at a time, as the pipelines call it
        if not (self.diffusion_forcing and noisy.shape[0] > 1 and transformer.config.inject_sample_info):
            return super().predict(transformer, noisy, timestep, batch, device, dtype)
        return torch.cat([
            super(SkyReelsV2Training, self).predict(
                transformer, noisy[i:i + 1], timestep[i:i + 1],
                {k: v[i:i + 1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, device, dtype)
            for i in range(noisy.shape[0])])

    #: the pipelines' default ``fps``, trained when the clips' rate is unknown (``options.fps`` None)
    default_frame_rate = 24

    def _frame_rate(self) -> float:
        return self.options.fps or self.default_frame_rate

    def model_kwargs(self, batch, device, dtype):
        kwargs = super().model_kwargs(batch, device, dtype)
        if self.diffusion_forcing:
            rate = 0 if self._frame_rate() == 16 else 1  # the pipelines' fps_embeds: 16 fps -> 0, any other -> 1
            kwargs.update(enable_diffusion_forcing=True, fps=[rate] * batch["prompt_embeds"].shape[0])
        return kwargs

    def render_kwargs(self):
        return {"fps": self._frame_rate()} if self.diffusion_forcing else {}


class HunyuanVideoTraining(TrainingAdapter):
    """HunyuanVideo: Llama text (embeddings + attention mask) and CLIP pooled text, latents ``z * scaling_factor``,
    the embedded guidance ``guidance * 1000`` as the distilled checkpoint's pipeline passes it."""

    text_length = 256

    @torch.no_grad()
    def encode_text(self, caption, kwargs, device):
        embeds, pooled, mask = self.pipe.encode_prompt(prompt=caption, device=device, **kwargs)
        return {"prompt_embeds": embeds[0], "pooled": pooled[0], "prompt_mask": mask[0].to(torch.int64)}

    def normalise(self, z):
        return z * self.pipe.vae.config.scaling_factor

    def model_kwargs(self, batch, device, dtype):
        b = batch["prompt_embeds"].shape[0]
        return {"encoder_hidden_states": batch["prompt_embeds"].to(device, dtype),
                "encoder_attention_mask": batch["prompt_mask"].to(device),
                "pooled_projections": batch["pooled"].to(device, dtype),
                "guidance": torch.full((b,), self.options.guidance * 1000.0, device=device)}


class CogVideoXTraining(TrainingAdapter):
    """CogVideoX 1.0 / 1.5 text-to-video: latents ``z * scaling_factor``, the transformer takes ``(B, F, C, H, W)``
    and the 3-D RoPE tables the pipeline builds (``_prepare_rotary_positional_embeddings``, for 5B / 1.5)."""

    text_length = None

    def default_text_length(self) -> int:
        return int(self.pipe.transformer.config.max_text_seq_length)  # the learned positions of 2B need exactly it

    @torch.no_grad()
    def encode_text(self, caption, kwargs, device):
        embeds, _ = self.pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, device=device,
                                            max_sequence_length=kwargs["max_sequence_length"])
        return {"prompt_embeds": embeds[0]}

    def normalise(self, z):
        return z * self.pipe.vae.config.scaling_factor

    def model_kwargs(self, batch, device, dtype):
        kwargs = super().model_kwargs(batch, device, dtype)
        latents = batch["latents"]
        if self.transformer.config.use_rotary_positional_embeddings:
            o = self.options
            kwargs["image_rotary_emb"] = self.pipe._prepare_rotary_positional_embeddings(
                o.height, o.width, latents.shape[2], device)
        if self.transformer.config.ofs_embed_dim is not None:  # 1.5: the pipeline's constant
            kwargs["ofs"] = torch.full((1,), 2.0, device=device, dtype=dtype)
        return kwargs

    def model_input(self, noisy, batch, device):
        return noisy.permute(0, 2, 1, 3, 4)  # (B, F, C, H, W)

    def model_output(self, out, like):
        return out.permute(0, 2, 1, 3, 4)


class _MaskedTextTraining(TrainingAdapter):
    """A T5 text with its attention mask (``encode_prompt`` returns embeddings, mask and the negative pair), passed as
    ``encoder_hidden_states`` / ``encoder_attention_mask``: LTX-Video and Mochi."""

    @torch.no_grad()
    def encode_text(self, caption, kwargs, device):
        embeds, mask, _, _ = self.pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False,
                                                     device=device, max_sequence_length=kwargs["max_sequence_length"])
        return {"prompt_embeds": embeds[0], "prompt_mask": mask[0].to(torch.int64)}

    def model_kwargs(self, batch, device, dtype):
        return {"encoder_hidden_states": batch["prompt_embeds"].to(device, dtype),
                "encoder_attention_mask": batch["prompt_mask"].to(device)}


class LTXVideoTraining(_MaskedTextTraining):
    """LTX-Video text-to-video: latents ``(z - mean) * scaling_factor / std`` with the VAE's buffers, packed into
    ``(B, F' H' W', C pt p p)`` tokens with the latent grid, text mask and RoPE interpolation scale passed as the
    pipeline passes them (``frame rate``: the clips' ``fps``, default 25 as ``LTXPipeline``)."""

    text_length = 128
    default_frame_rate = 25

    def normalise(self, z):
        vae = self.pipe.vae
        mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
        std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
        return (z - mean) * vae.config.scaling_factor / std

    def _patch(self) -> tuple[int, int]:
        config = self.transformer.config
        return int(config.patch_size_t), int(config.patch_size)

    def model_kwargs(self, batch, device, dtype):
        pipe = self.pipe
        pt, p = self._patch()
        _, _, f, h, w = batch["latents"].shape
        rate = self.render_kwargs()["frame_rate"]
        return {**super().model_kwargs(batch, device, dtype), "num_frames": f // pt, "height": h // p, "width": w // p,
                "rope_interpolation_scale": (pipe.vae_temporal_compression_ratio / rate,
                                             pipe.vae_spatial_compression_ratio, pipe.vae_spatial_compression_ratio)}

    def render_kwargs(self):
        return {"frame_rate": self.options.fps or self.default_frame_rate}

    def model_input(self, noisy, batch, device):
        from einops import rearrange

        pt, p = self._patch()
        return rearrange(noisy, "b c (f pt) (h ph) (w pw) -> b (f h w) (c pt ph pw)", pt=pt, ph=p, pw=p)

    def model_output(self, out, like):
        from einops import rearrange

        pt, p = self._patch()
        _, _, f, h, w = like.shape
        return rearrange(out, "b (f h w) (c pt ph pw) -> b c (f pt) (h ph) (w pw)", f=f // pt, h=h // p, w=w // p,
                         pt=pt, ph=p, pw=p)


class MochiTraining(_MaskedTextTraining):
    """Mochi: T5 text with its attention mask, latents ``(z - mean) * scaling_factor / std`` (the inverse of the
    pipeline's decode). The pipeline's scheduler decides the timestep direction (``invert_sigmas``: see
    ``lora_training.objective``)."""

    text_length = 256

    def normalise(self, z):
        config = self.pipe.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            return z * config.scaling_factor
        mean = torch.tensor(config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
        return (z - mean) * config.scaling_factor / std


class HunyuanVideo15Training(TrainingAdapter):
    """HunyuanVideo-1.5 text-to-video: Qwen2.5-VL text and ByT5 glyph text with their masks (the pipeline's own
    lengths, ``tokenizer_max_length`` / ``tokenizer_2_max_length``), latents ``z * scaling_factor``, and the inputs the
    text-to-video pipeline passes: the latent with zero condition latents and a zero mask on the channels, and zero
    SigLIP image tokens."""

    text_length = None

    def default_text_length(self) -> int:
        return int(self.pipe.tokenizer_max_length)

    @torch.no_grad()
    def encode_text(self, caption, kwargs, device):
        pipe = self.pipe
        if kwargs["max_sequence_length"] != pipe.tokenizer_max_length:
            raise ConfigError(f"max_sequence_length: {type(pipe).__name__} encodes {pipe.tokenizer_max_length} text "
                              "tokens (its tokenizer_max_length) and takes no other length; drop max_sequence_length")
        embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt=caption, device=device)
        return {"prompt_embeds": embeds[0], "prompt_mask": mask[0].to(torch.int64), "prompt_embeds_2": embeds_2[0],
                "prompt_mask_2": mask_2[0].to(torch.int64)}

    def normalise(self, z):
        return z * self.pipe.vae.config.scaling_factor

    def model_input(self, noisy, batch, device):
        b, c, f, h, w = noisy.shape
        return torch.cat([noisy, noisy.new_zeros(b, c + 1, f, h, w)], dim=1)  # condition latents + mask: zero in T2V

    def model_kwargs(self, batch, device, dtype):
        pipe = self.pipe
        b = batch["prompt_embeds"].shape[0]
        return {"encoder_hidden_states": batch["prompt_embeds"].to(device, dtype),
                "encoder_attention_mask": batch["prompt_mask"].to(device),
                "encoder_hidden_states_2": batch["prompt_embeds_2"].to(device, dtype),
                "encoder_attention_mask_2": batch["prompt_mask_2"].to(device),
                "image_embeds": torch.zeros(b, pipe.vision_num_semantic_tokens, pipe.vision_states_dim, device=device,
                                            dtype=dtype)}


class Kandinsky5Training(TrainingAdapter):
    """Kandinsky 5.0 Video: Qwen2.5-VL text (the pipeline's template and crop) and CLIP pooled text, latents
    ``z * scaling_factor``, and the transformer called as ``Kandinsky5T2VPipeline`` calls it: channels-last latents
    with, for ``visual_cond`` checkpoints, zero condition latents and a zero mask on the channels, the RoPE positions
    of the token grid and text, the resolution's RoPE scale, and ``sparse_params`` on NABLA checkpoints (they order
    the tokens in tiles; radial attention replaces NABLA's mask).

    Image-to-video as ``Kandinsky5I2VPipeline`` denoises: the first latent frame is the clip's first frame encoded
    alone (the VAE's mode; the pipeline samples it) and stays clean at every noise level, the mask channel is 1 there,
    and the loss leaves that frame out (``loss_weight``), since the pipeline never updates it.

    The transformer takes no text mask: the pipeline passes one prompt's tokens unpadded. The cache stores each
    caption's embeddings zero-padded to ``max_sequence_length`` with its mask, and a batch is cut to its longest
    caption: batch 1 is the pipeline's call exactly; in a larger batch the shorter captions' padding is attended, as
    in the pipeline's own batched calls (there padded with the pad token's states)."""

    text_length = 512
    image_to_video = True

    @torch.no_grad()
    def encode_condition(self, frames, device):
        """The first frame as the pipeline encodes its image: ``condition`` ``(C, 1, H', W')``, and ``loss_weight``
        ``(1, F', 1, 1)``, 0 on that frame."""
        from PIL import Image

        pipe, o = self.pipe, self.options
        pixels = pipe.video_processor.preprocess(Image.fromarray(frames[0].cpu().numpy()), height=o.height,
                                                 width=o.width).to(device, torch.float32)
        vae = pipe.vae
        image = vae.encode(pixels.unsqueeze(2).to(vae.dtype)).latent_dist.mode().float()
        latent_frames = (o.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        weight = torch.ones(1, latent_frames, 1, 1)
        weight[:, 0] = 0.0
        return {"condition": self.normalise(image)[0], "loss_weight": weight}

    @torch.no_grad()
    def encode_text(self, caption, kwargs, device):
        length = kwargs["max_sequence_length"]
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=caption, device=device, max_sequence_length=length)
        embeds = embeds[0, :length]
        mask = torch.zeros(length, dtype=torch.int64)
        mask[: embeds.shape[0]] = 1
        padded = embeds.new_zeros(length, embeds.shape[-1])
        padded[: embeds.shape[0]] = embeds
        return {"prompt_embeds": padded, "prompt_mask": mask, "pooled": pooled[0]}

    def normalise(self, z):
        return z * self.pipe.vae.config.scaling_factor

    def model_input(self, noisy, batch, device):
        if "condition" in batch:  # image-to-video: the first latent frame is the clean image latent
            noisy = torch.cat([batch["condition"].to(device, noisy.dtype), noisy[:, :, 1:]], dim=2)
        x = noisy.permute(0, 2, 3, 4, 1)  # (B, F, H, W, C)
        if self.transformer.config.visual_cond:  # zero condition latents; the mask marks the image's frame
            mask = x.new_zeros(*x.shape[:-1], 1)
            if "condition" in batch:
                mask[:, 0] = 1.0
            x = torch.cat([x, torch.zeros_like(x), mask], dim=-1)
        return x

    def model_output(self, out, like):
        return out.permute(0, 4, 1, 2, 3)

    def model_kwargs(self, batch, device, dtype):
        pipe, o = self.pipe, self.options
        length = int(batch["prompt_mask"].sum(-1).max())
        _, _, f, h, w = batch["latents"].shape
        pt, ph, pw = self.transformer.config.patch_size
        return {"encoder_hidden_states": batch["prompt_embeds"][:, :length].to(device, dtype),
                "pooled_projections": batch["pooled"].to(device, dtype),
                "visual_rope_pos": [torch.arange(f // pt, device=device), torch.arange(h // ph, device=device),
                                    torch.arange(w // pw, device=device)],
                "text_rope_pos": torch.arange(length, device=device),
                "scale_factor": pipe._get_scale_factor(o.height, o.width),
                # NABLA's tiled token order (None otherwise); it reads only the channels-last latent's shape
                "sparse_params": pipe.get_sparse_params(batch["latents"].permute(0, 2, 3, 4, 1), device)}


class Cosmos25Training(TrainingAdapter):
    """Cosmos-Predict2.5 text-to-world (``Cosmos2_5_PredictBasePipeline`` with neither ``image`` nor ``video``): the
    latents normalised as the pipeline normalises its conditioning latents (``(z - mean) / std``), the text as the
    pipeline encodes it (every Qwen2.5-VL layer's hidden states, normalised and concatenated), and the transformer
    called as the pipeline calls it: the flow sigma (the objective's timestep over the scheduler's
    ``num_train_timesteps``) per latent frame ``(B, 1, F', 1, 1)``, a zero condition mask (no frame given) and a zero
    padding mask of the video's pixel size. Its flow-matching target, ``noise - x0``, is the velocity the pipeline's
    UniPC scheduler integrates."""

    text_length = 512
    pipelines = ("Cosmos2_5_PredictBasePipeline",)
    pipelines_why = ("Cosmos 1.0's pipelines sample with an EDM scheduler this step does not model, and Predict2's "
                     "video-to-world pipeline has no LoRA loader in Diffusers 0.42")

    def predict(self, transformer, noisy, timestep, batch, device, dtype):
        steps = float(self.pipe.scheduler.config.num_train_timesteps)
        sigma = timestep.to(device, torch.float32) / steps
        if sigma.dim() == 1:
            sigma = sigma.view(-1, 1, 1, 1, 1).expand(-1, 1, noisy.shape[2], 1, 1)
        return super().predict(transformer, noisy, sigma, batch, device, dtype)

    def model_kwargs(self, batch, device, dtype):
        b, _, frames, h, w = batch["latents"].shape
        return {**super().model_kwargs(batch, device, dtype),
                "condition_mask": torch.zeros(b, 1, frames, h, w, device=device, dtype=dtype),
                "padding_mask": torch.zeros(1, 1, self.options.height, self.options.width, device=device, dtype=dtype)}
