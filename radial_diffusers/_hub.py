"""Telling a Hugging Face Hub repo id (``org/name``) from a local path, without importing anything heavy."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: object) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``"Wan-AI/Wan2.1-T2V-14B-Diffusers"``)."""
    return isinstance(name, str) and HUB_ID.match(name) is not None


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be meant as a local path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``, ``x/``):
    a Hub id is exactly ``org/name``."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name or name.count("/") > 1


def is_cached(repo_id: str, filename: str) -> bool:
    """Whether ``filename`` of the Hub repo ``repo_id`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def not_cached_reason(repo_id: str) -> str:
    """Why a Hub repo that is not in the local cache could not be loaded, and what to do (one line)."""
    from huggingface_hub import constants

    why = ("offline mode is on (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE
           else "the Hub could not be reached, or has no such repository")
    return (f"it is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. Download it where the "
            f"Hub is reachable (hf download {repo_id}), or give a local directory (there is no folder {repo_id!r} "
            "here)")
