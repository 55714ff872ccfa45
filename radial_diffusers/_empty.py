"""A Diffusers model built from its config on the meta device (DF11 loading, quantization configs, pipelines)."""

from __future__ import annotations

import os

__all__ = ["empty_model"]


def empty_model(source: str | os.PathLike | dict, subfolder: str | None = None):
    """A Diffusers model built from its config on the meta device (no weights read or allocated).

    ``source``: a config dict with ``_class_name``, or a local path / Hub id of the original model (only its
    ``config.json`` is read; ``subfolder`` defaults to ``"transformer"`` for a pipeline).

    Example:
        >>> m = empty_model("Wan-AI/Wan2.1-T2V-14B-Diffusers")  # doctest: +SKIP
    """
    import diffusers
    from accelerate import init_empty_weights
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin

    class _Config(ConfigMixin):
        config_name = "config.json"

    if isinstance(source, dict):
        config = dict(source)
    else:
        source = str(source)
        try:
            config = _Config.load_config(source, subfolder=subfolder)
            if subfolder is None and str(config.get("_class_name", "")).endswith("Pipeline"):
                config = _Config.load_config(source, subfolder="transformer")
        except OSError as exc:
            if subfolder is not None:
                raise
            try:
                config = _Config.load_config(source, subfolder="transformer")
            except OSError:
                raise exc from None
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)):
        raise ValueError(f"the config of {source!r} names class {name!r}, which is not a Diffusers model class")
    with init_empty_weights():
        model = cls.from_config(config)
    return model.eval()
