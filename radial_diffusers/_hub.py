"""Telling a Hugging Face Hub repo id (``org/name``) from a local path, without importing anything heavy."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: object) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``"Wan-AI/Wan2.1-T2V-14B-Diffusers"``)."""
    return isinstance(name, str) and HUB_ID.match(name) is not None
