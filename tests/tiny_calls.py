"""Pipeline-call arguments for the registered tiny models, shared by the test files."""

from __future__ import annotations

import inspect

import numpy as np
from PIL import Image

from radial_diffusers.families import get_tiny


def call_kwargs(pipe, name: str, batch: int = 2, seed: int = 0, cfg: bool = True) -> dict:
    """Arguments for ``pipe(prompt=[...] * batch, **call_kwargs(...))`` of tiny model ``name``: its registry geometry
    (genuinely sparse at block 16), its extra call arguments, classifier-free guidance (``true_cfg_scale`` where the
    pipeline has it, with a negative prompt) and, for image-to-video, a random image from ``seed``."""
    _, tiny = get_tiny(name)
    frames, height, width = tiny.geometry
    kwargs = dict(tiny.kwargs(), num_frames=frames, height=height, width=width)
    if cfg:
        negative = ["blurry low quality"] * batch
        if "true_cfg_scale" in inspect.signature(pipe.__call__).parameters:
            kwargs.update(true_cfg_scale=2.0, negative_prompt=negative)
        else:
            kwargs.update(guidance_scale=5.0, negative_prompt=negative)
    if tiny.image_to_video:
        rng = np.random.default_rng(seed)
        kwargs["image"] = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return kwargs
