"""``suggest_config``: propose dense layers, dense steps and a decay factor from attention recall measured on the
model itself.

One probe pass per prompt and seed follows the dense trajectory (every attention call dense) and measures, on
sampled query rows of every call, the softmax mass that the radial mask keeps, for the preset's decay and for each
candidate decay (:class:`~radial_diffusers.evaluation.recall.RecallProbe`). Then, for a target recall ``r``:

* dense layers: the leading layers whose mean recall is below ``r`` (``dense_layers`` keeps the first ``k`` layers
  dense; a later layer below ``r`` is reported, not fixed: no config can keep only it dense);
* dense steps: the leading steps whose mean recall over the remaining layers is below ``r``;
* decay: the smallest candidate (the sparsest mask) whose mean recall over the remaining cells reaches ``r``; when
  none does, the candidate with the highest recall, and the report says the target was not reached.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from ..config import RadialConfig

__all__ = ["Suggestion", "suggest_config"]

DEFAULT_DECAYS = (0.2, 0.5, 1.0)


@dataclass
class Suggestion:
    """The proposed config and what it rests on.

    Attributes:
        config: the proposed :class:`~radial_diffusers.RadialConfig` (``dense_steps`` as a step count for the
            measured schedule length).
        min_recall: the target.
        per_layer / per_step: mean recall of the base mask per layer (over steps) and per step (over all layers).
        by_decay: per candidate decay: the mean recall over the cells the proposal runs sparse and the mask density.
        notes: what the proposal could not fix, in words.
        result: the :class:`~radial_diffusers.evaluation.run.EvalResult` of the probe pass (recall matrices).
    """

    config: RadialConfig
    min_recall: float
    per_layer: list
    per_step: list
    by_decay: dict
    notes: list[str] = field(default_factory=list)
    result: object = field(default=None, repr=False)

    def explain(self) -> str:
        """What was measured and why the proposal is what it is, as lines of text."""
        c = self.config
        lines = [f"target recall {self.min_recall:g}; proposed: dense_layers={c.dense_layers}, "
                 f"dense_steps={c.dense_steps}, decay_factor={c.decay_factor}"]
        lines.append("recall per layer (mean over steps): " + ", ".join(
            f"{i}: {v:.3f}" for i, v in enumerate(self.per_layer) if v is not None))
        lines.append("recall per step (mean over layers): " + ", ".join(
            f"{i}: {v:.3f}" for i, v in enumerate(self.per_step) if v is not None))
        for decay, d in self.by_decay.items():
            recall = "n/a" if d["recall"] is None else f"{d['recall']:.3f}"
            density = "n/a" if d["density"] is None else f"{d['density']:.3f}"
            lines.append(f"decay {decay:g}: recall {recall} over the sparse cells, mask density {density}")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "min_recall": self.min_recall,
                "per_layer": self.per_layer, "per_step": self.per_step,
                "by_decay": {str(k): v for k, v in self.by_decay.items()}, "notes": self.notes}


def _leading_below(values: list, threshold: float) -> int:
    n = 0
    for v in values:
        if v is None or v >= threshold:
            break
        n += 1
    return n


def suggest_config(pipe, prompts: str | Sequence[str], *, config: RadialConfig | None = None,
                   min_recall: float = 0.9, decays: Sequence[float] = DEFAULT_DECAYS, seeds: Sequence[int] = (0,),
                   recall_rows: int = 64, progress: bool = True, **call) -> Suggestion:
    """Measure recall on ``pipe`` for ``prompts`` and propose a :class:`~radial_diffusers.RadialConfig`.

    Args:
        pipe: a pipeline of a supported family (radial attention, if applied, is removed).
        prompts: prompts to measure on (a few typical ones).
        config: the base config (block size, adjacency, sink; default the preset).
        min_recall: the target share of the softmax mass the sparse calls keep.
        decays: candidate decay factors (the base config's is always measured).
        seeds, recall_rows: as for :func:`~radial_diffusers.evaluation.run.evaluate`.
        **call: the pipeline call's geometry and arguments (``num_frames``, ``height``, ``width``,
            ``num_inference_steps``, ``call_kwargs``).

    Example:
        >>> s = suggest_config(pipe, ["a red circle moving right on a dark background"], num_frames=129,
        ...                    height=128, width=128, num_inference_steps=20)       # doctest: +SKIP
        >>> print(s.explain())                                                      # doctest: +SKIP
    """
    from ..pipelines import detect_family
    from .recall import cells_mean
    from .run import evaluate

    if not 0.0 < min_recall <= 1.0:
        raise ValueError(f"min_recall must be in (0, 1], got {min_recall}")
    preset = detect_family(pipe).preset_for(pipe, pipe.transformer)
    base = (config or RadialConfig()).with_preset(preset)
    candidates = sorted({float(d) for d in decays} | {float(base.decay_factor)})
    result = evaluate(pipe, prompts, variants=[], recall_configs=[base], seeds=seeds, recall_rows=max(1, recall_rows),
                      recall_decays=candidates, progress=progress, **call)
    (rec,) = result.recall.values()
    matrix = rec["matrix"]
    layers, steps = len(matrix), max((len(r) for r in matrix), default=0)

    def mean(cells, m):
        return cells_mean(m, cells)

    per_layer = [mean([(s, l) for s in range(steps)], matrix) for l in range(layers)]
    dense_layers = _leading_below(per_layer, min_recall)
    notes = []
    if dense_layers == layers:
        notes.append("every layer is below the target: the mask does not fit this model at this geometry; "
                     "dense_layers keeps them all dense (radial attention would skip nothing)")
    rest = range(dense_layers, layers)
    per_step = [mean([(s, l) for l in range(layers)], matrix) for s in range(steps)]
    per_step_rest = [mean([(s, l) for l in rest], matrix) for s in range(steps)]
    dense_steps = _leading_below(per_step_rest, min_recall) if rest else steps
    late = [l for l in rest if per_layer[l] is not None and per_layer[l] < min_recall]
    if late:
        notes.append(f"layers {late} stay below the target but are not leading layers; dense_layers keeps only the "
                     "first k layers dense")
    cells = [(s, l) for s in range(dense_steps, steps) for l in rest]
    by_decay = {}
    for d in candidates:
        what = rec["what_if"].get(str(d)) or rec["what_if"].get(repr(d))
        by_decay[d] = {"recall": mean(cells, what["matrix"]) if cells else None, "density": what["density"]}
    good = [d for d in candidates if by_decay[d]["recall"] is not None and by_decay[d]["recall"] >= min_recall]
    if good:
        decay = min(good)
    else:
        scored = [d for d in candidates if by_decay[d]["recall"] is not None]
        decay = max(scored, key=lambda d: (by_decay[d]["recall"], -d)) if scored else base.decay_factor
        if cells:
            notes.append(f"no candidate decay reaches recall {min_recall:g} on the sparse cells; decay {decay:g} "
                         "has the highest")
    proposed = dataclasses.replace(base, dense_layers=dense_layers, dense_steps=dense_steps, decay_factor=decay)
    return Suggestion(config=proposed, min_recall=min_recall, per_layer=per_layer, per_step=per_step,
                      by_decay=by_decay, notes=notes, result=result)
