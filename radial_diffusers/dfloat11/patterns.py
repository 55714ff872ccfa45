"""Which Linear weights of a model form DF11 units: ``pattern_dict`` = ``{module regex: [linear paths, ...]}``.

A module whose full name matches a regex (``re.fullmatch``, as the official loader does) is one unit; the weights of
the listed Linears (paths relative to that module) are concatenated in the listed order into one stream with one
codebook. The order is part of the format: a checkpoint's own ``pattern_dict`` is what a loader must follow.

Defaults come from the model-family registry (each family's ``df11_pattern``): the transformer blocks of Wan2.1 (T2V
and I2V), HunyuanVideo (dual- and single-stream blocks) and every other registered family.
Embedders, ``proj_out``, norms and biases stay plain BF16, as in the official diffusion releases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..families import families, find_family

__all__ = ["DEFAULT_PATTERNS", "UnitSpec", "default_pattern", "find_units", "linear_paths", "join", "base_linear",
           "has_peft_layers", "weight_shape", "claim"]

class _DefaultPatterns(Mapping):
    """``DEFAULT_PATTERNS[transformer class name]``: the DF11 ``pattern_dict`` of each registered model family (its
    registry entry's ``df11_pattern``). Optional entries (absent in some configurations, e.g. ``attn2.add_k_proj``
    exists only in Wan2.1 I2V) are dropped by :func:`default_pattern` when the model does not have them."""

    def _table(self) -> dict[str, dict[str, list[str]]]:
        return {cls: f.df11_pattern for f in families() if f.df11_pattern for cls in f.transformer_classes}

    def __getitem__(self, name: str) -> dict[str, list[str]]:
        return {regex: list(paths) for regex, paths in self._table()[name].items()}  # a copy: the registry's stays

    def __iter__(self):
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


DEFAULT_PATTERNS: Mapping[str, dict[str, list[str]]] = _DefaultPatterns()


def linear_paths(attrs) -> tuple[str, ...]:
    """A pattern's Linear paths; an empty list means the matched module is itself the one Linear (``("",)``)."""
    return tuple(attrs) or ("",)


def join(name: str, attr: str) -> str:
    """The full name of Linear ``attr`` of unit ``name`` (``attr == ""``: the unit itself)."""
    return f"{name}.{attr}" if attr else name


@dataclass(frozen=True)
class UnitSpec:
    """One DF11 unit of a model: the module's full name and its Linears' paths (stream order) and weight shapes."""

    name: str
    attrs: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(a * b for a, b in self.shapes)

    @property
    def file_name(self) -> str:
        """The official per-unit file name: ``blocks.7`` -> ``blocks_7.safetensors``."""
        return self.name.replace(".", "_") + ".safetensors"

    def weight_keys(self) -> list[str]:
        return [f"{join(self.name, a)}.weight" for a in self.attrs]


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def base_linear(module: nn.Module) -> nn.Module:
    """The layer wrapped by a PEFT tuner layer (``get_base_layer``), else ``module`` itself."""
    get_base = getattr(module, "get_base_layer", None)
    return get_base() if callable(get_base) else module


def weight_shape(module: nn.Module) -> tuple[int, int] | None:
    """The 2-D weight shape of a layer DF11 can compress (``nn.Linear``: (out, in); ``nn.Embedding``: (num, dim)).

    ``None`` for any other module. Read from the layer's attributes, so it works on meta and compressed layers.
    """
    if isinstance(module, nn.Linear):
        return (int(module.out_features), int(module.in_features))
    if isinstance(module, nn.Embedding):  # LLM releases compress embed_tokens as a unit of its own
        return (int(module.num_embeddings), int(module.embedding_dim))
    return None


def has_peft_layers(model: nn.Module) -> bool:
    """Whether PEFT tuner layers (LoRA ...) wrap any module of ``model``."""
    return any(callable(getattr(m, "get_base_layer", None)) for m in model.modules())


def default_pattern(model: nn.Module) -> dict[str, list[str]]:
    """The default ``pattern_dict`` for ``model`` (its family's ``df11_pattern``), restricted to the Linears it has.

    Where the modules one regex matches differ in which listed Linears they have (Mochi's last block lacks the text
    output path; only Wan VACE's first control block has ``proj_in``), each kind of module gets its own regex naming
    those modules, so every listed Linear is compressed.

    Raises ``ValueError`` for other model classes (pass an explicit ``pattern`` there).

    Example:
        >>> from radial_diffusers.tiny import load_tiny  # doctest: +SKIP
        >>> default_pattern(load_tiny("tiny-wan").transformer)[r"blocks\\.\\d+"][:2]  # doctest: +SKIP
        ['attn1.to_q', 'attn1.to_k']
    """
    family = find_family(model)
    spec = family.df11_pattern if family is not None else None
    if not spec:
        raise ValueError(
            f"no default DF11 pattern for {type(model).__name__} (defaults: {', '.join(DEFAULT_PATTERNS)}); pass "
            "pattern={module_regex: [linear paths in the block, ...]}, e.g. {r'blocks\\.\\d+': ['attn.to_q', ...]}"
        )
    out: dict[str, list[str]] = {}
    for regex, attrs in spec.items():
        groups: dict[tuple[str, ...], list[str]] = {}  # the Linears a matched module has -> those modules
        for name, module in model.named_modules():
            if re.fullmatch(regex, name):
                groups.setdefault(tuple(a for a in attrs if _get(module, a) is not None), []).append(name)
        groups = {have: names for have, names in groups.items() if have}
        if len(groups) == 1:
            out[regex] = list(next(iter(groups)))
        else:  # blocks that differ (Mochi's last block has no text output path): one regex per kind of block
            out.update({_names_regex(names): list(have) for have, names in groups.items()})
    if not out:
        raise ValueError(f"{type(model).__name__} has no module matching the default DF11 patterns {list(spec)}")
    return out


def _names_regex(names: list[str]) -> str:
    """A regex matching exactly the module ``names`` (``transformer_blocks\\.(0|1|2)`` for numbered siblings)."""
    split = [re.fullmatch(r"(.*)\.(\d+)", n) for n in names]
    prefixes = {m.group(1) for m in split if m is not None}
    if all(split) and len(prefixes) == 1:
        return rf"{re.escape(prefixes.pop())}\.({'|'.join(m.group(2) for m in split)})"
    return "|".join(re.escape(n) for n in names)


def claim(claimed: dict[int, tuple[str, str]], layer: nn.Module, full: str, unit: str, error: str = "") -> None:
    """Record that Linear ``full`` (the module object ``layer``) belongs to unit ``unit``; a layer claimed twice (two
    units whose Linears overlap, or one module object reachable under two names) is a ``ValueError``: its weight would
    be encoded twice and a loader would fail half-way through."""
    key = id(layer)
    if key in claimed:
        other, other_unit = claimed[key]
        what = (f"{full} belongs to two DF11 units, {other_unit!r} and {unit!r}" if other == full else
                f"{full} and {other} are one and the same {type(layer).__name__} (a shared module), listed in DF11 units "
                f"{other_unit!r} and {unit!r}")
        raise ValueError(f"{error}{what}: each weight must belong to exactly one unit. Make the pattern's units "
                         "disjoint (no regex matching a module inside another unit's listed Linears), and untie shared "
                         "Linears or list them once")
    claimed[key] = (full, unit)


def find_units(model: nn.Module, pattern: dict[str, list[str]]) -> list[UnitSpec]:
    """Every module of ``model`` whose full name matches a regex of ``pattern``, with its listed Linears.

    Each listed path must be an ``nn.Linear`` (or a PEFT layer wrapping one) with a 2-D weight, in every matched
    module; a module that matches two regexes, a Linear claimed by two units (see :func:`claim`), or a pattern that
    matches nothing, is an error.
    """
    if not isinstance(pattern, dict) or not pattern:
        raise ValueError(f"pattern must be a non-empty dict {{module regex: [linear paths]}}, got {pattern!r}")
    compiled = []
    for regex, attrs in pattern.items():
        try:
            compiled.append((re.compile(regex), regex))
        except re.error as exc:
            raise ValueError(f"bad DF11 pattern regex {regex!r}: {exc}") from None
        if isinstance(attrs, str) or not isinstance(attrs, (list, tuple)) or not all(
                isinstance(a, str) and a for a in attrs):
            raise ValueError(f"pattern[{regex!r}] must be a list of Linear paths ([] when the matched module is "
                             f"itself the Linear), got {attrs!r}")
        if len(set(attrs)) != len(attrs):
            raise ValueError(f"pattern[{regex!r}] lists a Linear twice: {attrs!r}")
    units: list[UnitSpec] = []
    used: set[str] = set()
    claimed: dict[int, tuple[str, str]] = {}
    for name, module in model.named_modules():
        hits = [regex for rx, regex in compiled if rx.fullmatch(name)]
        if not hits:
            continue
        if len(hits) > 1:
            raise ValueError(f"module {name!r} matches several DF11 patterns: {hits}")
        regex = hits[0]
        used.add(regex)
        shapes = []
        attrs = linear_paths(pattern[regex])
        for attr in attrs:
            sub = _get(module, attr)
            if sub is None:
                raise ValueError(f"DF11 pattern {regex!r} lists {attr!r}, but {join(name, attr)} does not exist")
            lin = base_linear(sub)
            shape = weight_shape(lin)
            if shape is None:
                raise ValueError(f"{join(name, attr)} is a {type(lin).__name__}; DF11 units hold nn.Linear (or "
                                 "nn.Embedding) weights")
            w = lin._parameters.get("weight")
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != shape:
                raise ValueError(f"{join(name, attr)} has no {shape} weight (already DF11-compressed?)")
            claim(claimed, lin, join(name, attr), name)
            shapes.append(shape)
        units.append(UnitSpec(name, attrs, tuple(shapes)))
    unused = [regex for _, regex in compiled if regex not in used]
    if unused:
        raise ValueError(f"DF11 pattern(s) {unused} match no module of {type(model).__name__}")
    return units
