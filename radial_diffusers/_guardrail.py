"""A pass-through stand-in for NVIDIA's Cosmos guardrail, for the tiny Cosmos pipelines only.

Diffusers' Cosmos pipelines refuse to run without a ``safety_checker`` and build the real one (the
``cosmos_guardrail`` package, several GB of models) when none is given. The tiny pipelines of
:mod:`radial_diffusers.tiny` carry this one instead: it lets every prompt and frame through. It lives in its own
module so that a tiny Cosmos pipeline saved with ``save_pretrained`` loads back (Diffusers records the component as
``["radial_diffusers._guardrail", "PassThroughGuardrail"]``). Real checkpoints keep NVIDIA's guardrail: this class is
never put into a pipeline the user loads.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

__all__ = ["PassThroughGuardrail"]


class PassThroughGuardrail(ModelMixin, ConfigMixin):
    """The Cosmos pipelines' ``safety_checker`` interface (``check_text_safety``, ``check_video_safety``, ``device``,
    ``to``) that passes everything: prompts are safe, videos come back unchanged."""

    def __init__(self) -> None:
        super().__init__()
        # a buffer, so that device / dtype follow .to() as the pipelines expect of a model; persistent, so that
        # save_pretrained writes a weights file for from_pretrained to read
        self.register_buffer("_where", torch.zeros(1))

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames

    @property
    def device(self) -> torch.device:
        return self._where.device

    @property
    def dtype(self) -> torch.dtype:
        return self._where.dtype
