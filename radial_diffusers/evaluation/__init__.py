"""Radial vs dense quality on a real pipeline: :func:`evaluate` (PSNR / SSIM of the decoded videos against dense,
attention recall measured inside the processors, step times, the HTML report) and :func:`suggest_config` (dense
layers / dense steps / decay from measured recall).

Modules: ``metrics`` (PSNR, SSIM, recall of a layout), ``recall`` (the probe the processors report to), ``timing``
(per-step seconds of a pipeline call), ``run`` (``evaluate``), ``report`` (the report folder), ``suggest``.

Example:
    >>> import radial_diffusers as rd                                                   # doctest: +SKIP
    >>> result = rd.evaluate(pipe, ["a red circle moving right on a dark background"],
    ...                      num_frames=129, height=128, width=128, num_inference_steps=20)  # doctest: +SKIP
    >>> result.write("outputs/eval")                                                    # doctest: +SKIP
"""

from .run import EvalResult, Variant, VariantResult, default_variants, evaluate
from .suggest import Suggestion, suggest_config

__all__ = ["evaluate", "default_variants", "Variant", "VariantResult", "EvalResult", "suggest_config", "Suggestion"]
