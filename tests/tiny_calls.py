"""Pipeline-call arguments for the registered tiny models, shared by the test files."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from radial_diffusers.families import get_tiny


def call_kwargs(pipe, name: str, batch: int = 2, seed: int = 0, cfg: bool = True) -> dict:
    """Arguments for ``pipe(prompt=[...] * batch, **call_kwargs(...))`` of tiny model ``name``: its registry geometry
    (genuinely sparse at block 16), its extra call arguments, classifier-free guidance (``true_cfg_scale`` where the
    pipeline has it, with a negative prompt) and, for image-to-video, a random image from ``seed``.

    A pipeline with a guider instead of ``guidance_scale`` (HunyuanVideo-1.5) gets only the negative prompt: its
    guidance is the guider's (the tiny ones guide, ``cfg=False`` or not). One that takes no ``height`` / ``width``
    (HunyuanVideo-1.5 image-to-video: the size follows the image and ``target_size``) gets only the image of that
    size."""
    _, tiny = get_tiny(name)
    frames, height, width = tiny.geometry
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(tiny.kwargs(), num_frames=frames)
    if "height" in params:
        kwargs.update(height=height, width=width)
    if cfg:
        negative = ["blurry low quality"] * batch
        if "true_cfg_scale" in params:
            kwargs.update(true_cfg_scale=2.0, negative_prompt=negative)
        elif "guidance_scale" in params:
            kwargs.update(guidance_scale=5.0, negative_prompt=negative)
        else:
            kwargs.update(negative_prompt=negative)
    if tiny.image_to_video:
        rng = np.random.default_rng(seed)
        kwargs["image"] = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return kwargs


def stock_and_radial(pipe, kwargs: dict, config):
    """``(stock, radial, state)``: the pipeline's output for ``kwargs`` (seed 0) with the stock processors, then with
    radial attention (``config``) applied for one call, which must raise no warning; radial attention is removed
    after it."""
    import warnings

    import radial_diffusers as rd

    with torch.no_grad():
        stock = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
        state = rd.apply_radial_attention(pipe, config)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
        finally:
            rd.remove_radial_attention(pipe)
    return stock, got, state


class _FirstCall(Exception):
    """Stops a pipeline call at its first transformer call (see :func:`first_transformer_call`)."""


def first_transformer_call(pipe, **call) -> dict:
    """The keyword arguments ``pipe(output_type="latent", generator=<seed 0>, **call)`` passes its transformer first;
    the run stops there (raises if the pipeline never calls it)."""
    pipe.set_progress_bar_config(disable=True)
    seen = {}

    def capture(module, args, kwargs):
        seen["kwargs"] = dict(kwargs)
        raise _FirstCall

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(output_type="latent", generator=torch.Generator().manual_seed(0), **call)
    except _FirstCall:
        return seen["kwargs"]
    finally:
        handle.remove()
    raise AssertionError(f"{type(pipe).__name__} returned without calling its transformer")
