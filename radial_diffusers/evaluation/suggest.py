"""``suggest_config``: propose dense layers, dense steps and a decay factor from attention recall measured on the
model itself.

One probe pass per prompt and seed follows the dense trajectory (every attention call dense) and measures, on
sampled query rows of every call, the softmax mass that the radial mask keeps, for the preset's decay and for each
candidate decay (:class:`~radial_diffusers.evaluation.recall.RecallProbe`). Then, for a target recall ``r``, each
candidate decay's mask gets its own plan:

* dense layers: the leading layers whose mean recall is below ``r`` (``dense_layers`` keeps the first ``k`` layers
  dense; a later layer below ``r`` is reported, not fixed: no config can keep only it dense);
* dense steps: the leading steps whose mean recall over the remaining layers is below ``r``;

and the proposal is the plan that skips the most attention (the share of (step, layer) cells it runs sparse times
the share of blocks its mask skips) among those whose sparse cells reach ``r`` on average. A sparser mask is not
always the better one: if its low recall forces every layer dense, a wider mask that keeps most layers sparse skips
more. When no plan reaches ``r``, every layer stays dense and the report says so.
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
        per_layer / per_step: mean recall of the proposed decay's mask per layer (over steps) and per step (over all
            layers).
        by_decay: per candidate decay, its plan: ``dense_layers``, ``dense_steps``, the mean ``recall`` over the
            cells it runs sparse (``None``: none), the mask ``density`` and the share of attention ``skipped``.
        notes: what the proposal could not fix, in words.
        result: the :class:`~radial_diffusers.evaluation.run.EvalResult` of the probe pass (recall matrices).
        base: the config the candidates vary (block size, adjacency, sink, the preset's decay).
    """

    config: RadialConfig
    min_recall: float
    per_layer: list
    per_step: list
    by_decay: dict
    notes: list[str] = field(default_factory=list)
    result: object = field(default=None, repr=False)
    base: RadialConfig | None = field(default=None, repr=False)

    @property
    def reached(self) -> bool:
        """Whether some candidate's plan reaches the target; when none does, ``config`` keeps every layer dense (it
        runs as the dense reference does)."""
        return any(_reaches(d, self.min_recall) for d in self.by_decay.values())

    def retarget(self, min_recall: float) -> "Suggestion":
        """The proposal for another target recall from the same measurement (no new probe pass).

        Example:
            >>> lax = suggestion.retarget(0.7)          # doctest: +SKIP
        """
        if self.result is None or self.base is None:
            raise ValueError("retarget needs the measurement: use a Suggestion returned by suggest_config")
        (rec,) = self.result.recall.values()
        return _propose(self.base, rec, sorted(self.by_decay), min_recall, self.result)

    def explain(self) -> str:
        """What was measured and why the proposal is what it is, as lines of text."""
        c = self.config
        if self.reached:
            lines = [f"target recall {self.min_recall:g}; proposed: dense_layers={c.dense_layers}, "
                     f"dense_steps={c.dense_steps}, decay_factor={c.decay_factor}"]
        else:
            lines = [f"target recall {self.min_recall:g}: no candidate reaches it; proposed: every layer dense "
                     f"(dense_layers={c.dense_layers}), the dense reference"]
        lines.append("recall per layer (mean over steps): " + ", ".join(
            f"{i}: {v:.3f}" for i, v in enumerate(self.per_layer) if v is not None))
        lines.append("recall per step (mean over layers): " + ", ".join(
            f"{i}: {v:.3f}" for i, v in enumerate(self.per_step) if v is not None))
        for decay, d in self.by_decay.items():
            recall = "n/a (no sparse cell)" if d["recall"] is None else f"{d['recall']:.3f}"
            density = "n/a" if d["density"] is None else f"{d['density']:.3f}"
            short = not _reaches(d, self.min_recall)  # no sparse cell, or too few kept
            lines.append(f"decay {decay:g}: dense_layers={d['dense_layers']}, dense_steps={d['dense_steps']}, recall "
                         f"{recall} over its sparse cells, mask density {density}, attention skipped "
                         f"{100 * d['skipped']:.1f}%" + (" (misses the target: not proposed)" if short else ""))
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "min_recall": self.min_recall, "reached": self.reached,
                "per_layer": self.per_layer, "per_step": self.per_step,
                "by_decay": {str(k): v for k, v in self.by_decay.items()}, "notes": self.notes}


def _reaches(plan: dict, min_recall: float) -> bool:
    """Whether a candidate's plan keeps ``min_recall`` on average over the cells it runs sparse (it has some)."""
    return plan["recall"] is not None and plan["recall"] >= min_recall


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
    from .run import evaluate

    _check_target(min_recall)
    preset = detect_family(pipe).preset_for(pipe, pipe.transformer)
    base = (config or RadialConfig()).with_preset(preset)
    candidates = sorted({float(d) for d in decays} | {float(base.decay_factor)})
    result = evaluate(pipe, prompts, variants=[], recall_configs=[base], seeds=seeds, recall_rows=max(1, recall_rows),
                      recall_decays=candidates, progress=progress, **call)
    (rec,) = result.recall.values()
    if "error" in rec:
        raise RuntimeError(f"suggest_config: the recall pass failed: {rec['error']}")
    return _propose(base, rec, candidates, min_recall, result)


def _check_target(min_recall: float) -> None:
    if not 0.0 < min_recall <= 1.0:
        raise ValueError(f"min_recall must be in (0, 1], got {min_recall}")


def _propose(base: RadialConfig, rec: dict, candidates: list[float], min_recall: float, result) -> Suggestion:
    """The proposal for ``min_recall`` from one recall pass's what-if matrices (``rec``) of the candidate decays."""
    _check_target(min_recall)
    plans = {d: _plan(rec["what_if"].get(str(d)) or rec["what_if"][repr(d)], min_recall, base.last_dense_steps)
             for d in candidates}
    good = [d for d, plan in plans.items() if _reaches(plan, min_recall)]
    notes = []
    if good:
        decay = max(good, key=lambda d: (plans[d]["skipped"], -d))
        chosen = plans[decay]
        dense_layers, dense_steps = chosen["dense_layers"], chosen["dense_steps"]
        late = [l for l in range(dense_layers, len(chosen["per_layer"]))
                if chosen["per_layer"][l] is not None and chosen["per_layer"][l] < min_recall]
        if late:
            notes.append(f"layers {late} stay below the target but are not leading layers; dense_layers keeps only "
                         "the first k layers dense")
    else:
        decay = float(base.decay_factor)
        chosen = plans[decay]
        dense_layers, dense_steps = len(chosen["per_layer"]), 0
        tried = ", ".join(f"{d:g}" for d in candidates)
        notes.append(f"no candidate decay ({tried}) keeps a mean recall of {min_recall:g} on the cells it would run "
                     "sparse: the mask does not fit this model at this geometry and target; every layer stays dense "
                     "(radial attention would skip nothing)")
    proposed = dataclasses.replace(base, dense_layers=dense_layers, dense_steps=dense_steps, decay_factor=decay)
    by_decay = {d: {k: v for k, v in plan.items() if k not in ("per_layer", "per_step")} for d, plan in plans.items()}
    per_layer, per_step = chosen["per_layer"], chosen["per_step"]
    return Suggestion(config=proposed, min_recall=min_recall, per_layer=per_layer, per_step=per_step,
                      by_decay=by_decay, notes=notes, result=result, base=base)


def _plan(what: dict, min_recall: float, last_dense_steps: int | float = 0) -> dict:
    """One candidate mask's plan from its recall ``{"matrix": [layer][step], "density"}``: leading low layers and
    steps dense (the config's ``last_dense_steps`` stay dense too); the mean recall over the cells left sparse and the
    share of all attention blocks the plan skips."""
    from ..config import _to_steps
    from .recall import cells_mean

    matrix, density = what["matrix"], what["density"]
    layers, steps = len(matrix), max((len(r) for r in matrix), default=0)
    per_layer = [cells_mean(matrix, [(s, l) for s in range(steps)]) for l in range(layers)]
    per_step = [cells_mean(matrix, [(s, l) for l in range(layers)]) for s in range(steps)]
    dense_layers = _leading_below(per_layer, min_recall)
    rest = range(dense_layers, layers)
    end = max(0, steps - _to_steps("last_dense_steps", last_dense_steps, steps))  # the last steps run dense anyway
    per_step_rest = [cells_mean(matrix, [(s, l) for l in rest]) for s in range(end)]
    dense_steps = _leading_below(per_step_rest, min_recall) if rest else steps
    cells = [(s, l) for s in range(dense_steps, end) for l in rest]
    recall = cells_mean(matrix, cells) if cells else None
    skipped = len(cells) / max(1, layers * steps) * (1.0 - density) if cells and density is not None else 0.0
    return {"dense_layers": dense_layers, "dense_steps": dense_steps, "recall": recall, "density": density,
            "skipped": skipped, "per_layer": per_layer, "per_step": per_step}
