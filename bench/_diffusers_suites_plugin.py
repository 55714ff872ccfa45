"""pytest plugin for ``bench/diffusers_suites.py``: every video transformer Diffusers' tests build gets radial attention.

Loaded with ``-p _diffusers_suites_plugin`` (its folder on ``PYTHONPATH``). It wraps the ``__init__`` of each video
transformer class Diffusers exports so that the model, once built (directly, through ``from_pretrained`` or by a
test's reload), has :func:`radial_diffusers.apply_radial_attention` applied, sparse from its first call:
``RadialConfig(block_size=RD_SUITES_BLOCK, dense_steps=0, dense_layers=0)``. ``RD_SUITES_OFF=1`` leaves the stock
processors (the baseline run); ``RD_SUITES_COUNT=FILE`` appends one line per model it installed radial attention on
(one file for all xdist workers).
"""

from __future__ import annotations

import functools
import os

import diffusers

import radial_diffusers as rd

# The transformer classes of the families radial-diffusers supports (those missing from the installed Diffusers are
# skipped).
CLASSES = ("WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel",
           "HunyuanVideoTransformer3DModel", "HunyuanVideo15Transformer3DModel", "LTXVideoTransformer3DModel",
           "CogVideoXTransformer3DModel", "MochiTransformer3DModel")


def _config() -> rd.RadialConfig:
    return rd.RadialConfig(block_size=int(os.environ.get("RD_SUITES_BLOCK", "16")), dense_steps=0, dense_layers=0)


def _install(cls) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        rd.apply_radial_attention(self, _config())
        count = os.environ.get("RD_SUITES_COUNT")
        if count:
            with open(count, "a") as f:
                f.write(cls.__name__ + "\n")

    cls.__init__ = __init__


if os.environ.get("RD_SUITES_OFF") != "1":
    for _name in CLASSES:
        _cls = getattr(diffusers, _name, None)
        if _cls is not None:
            _install(_cls)
