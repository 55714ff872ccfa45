"""``TrainConfig``: every option of a LoRA length-extension run, read from YAML/JSON and checked before any model loads.

    model: Wan-AI/Wan2.1-T2V-1.3B-Diffusers
    data_dir: data/clips                  # clip.mp4 + clip.txt pairs (or manifest: clips.jsonl / clips.csv)
    output_dir: runs/wan-2x
    num_frames: 161
    height: 480
    width: 832
    rank: 128
    max_steps: 2000

Unknown keys, wrong types and impossible values are errors that name the key and the fix. ``load_config`` also takes
``key=value`` overrides (the CLI's ``--set``): a text option takes the value as typed (``mixed_precision=no``,
``validation_prompt=a cat: dancing #1``; quote it or write ``null`` for YAML's meaning), other options are YAML scalars.
Files and overrides are read with YAML 1.2 scalars: only ``true``/``false`` are booleans (``no``, ``off``, ``yes``,
``on`` stay text, and a yes/no option takes them as booleans), ``1e-4`` is a number, ``010`` is ten and dates are text.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from radial_diffusers.errors import ConfigError as _RadialConfigError
from radial_diffusers.families import family_names, get_family, tiny_models

__all__ = ["TrainConfig", "load_config", "ConfigError", "DEFAULT_TARGETS", "LR_SCHEDULERS", "SCHEDULE_OPTIONS",
           "add_cli_arguments"]


class _DefaultTargets(Mapping):
    """``DEFAULT_TARGETS[family]``: the family's default LoRA ``target_modules`` regex (the attention projections,
    the paper's q/k/v/out; PEFT full match), read live from the model-family registry."""

    def __getitem__(self, name: str) -> str:
        return get_family(name).lora_targets

    def __iter__(self):
        return iter(family_names())

    def __len__(self) -> int:
        return len(family_names())


DEFAULT_TARGETS = _DefaultTargets()
# diffusers.optimization.SchedulerType values; piecewise_constant needs step_rules, which TrainConfig does not take
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
# the options that shape the learning-rate schedule: a resume that changes one needs --allow-schedule-change
SCHEDULE_OPTIONS = ("max_steps", "warmup_steps", "lr_scheduler", "learning_rate")
# YAML 1.1 boolean words, which the YAML 1.2 reader keeps as text: a yes/no option still takes them
_BOOL_WORDS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


class ConfigError(_RadialConfigError):
    """A bad training configuration; the message names the key (a ``ValueError`` and a ``RadialError``)."""


@dataclass
class TrainConfig:
    """A LoRA length-extension run. Geometry in pixels/frames; steps are optimizer steps."""

    # model and data
    model: str  # Hub id, local pipeline folder, or a tiny model (tiny-wan, tiny-hunyuan, tiny-cogvideox, ...)
    data_dir: str
    output_dir: str
    expert: str | None = None  # two-expert pipelines (Wan2.2 A14B): high_noise (transformer) or low_noise (transformer_2)
    manifest: str | None = None  # .jsonl / .csv inside data_dir (default: clip.mp4 + clip.txt pairs)
    cache_dir: str | None = None  # encoded latents + text embeddings (default: <output_dir>/cache)
    dfloat11: str | None = None  # train on a DFloat11-compressed base (checkpoint dir / Hub id)
    revision: str | None = None  # a branch, tag or commit of a Hub id model (Cosmos-Predict2.5's Diffusers weights)
    quant: str | None = None  # a torchao base that allows LoRA: int8-weight, fp8-weight, int4-weight-cpu
    quant_group_size: int = 128  # group size of the int4 schemes
    num_frames: int = 81  # 4k + 1
    height: int = 480
    width: int = 832
    # sampling rate of training clips: "auto" = the model family's frame rate (Wan 16, HunyuanVideo 24, CogVideoX 8,
    # LTX-Video 24, Mochi 30: the motion speed the model learned); null = consecutive source frames
    fps: float | str | None = "auto"
    max_sequence_length: int | None = None  # text tokens (default: the pipeline's)

    # LoRA
    rank: int = 128
    alpha: float | None = None  # default: rank (scale 1)
    lora_dropout: float = 0.0
    target_modules: str | list[str] | None = None  # default: DEFAULT_TARGETS[family]

    # attention
    attention: str = "radial"  # "radial" or "dense"
    block_size: int | None = None  # default: the model's inference preset (128; Wan2.2 A14B 64)
    decay_factor: float | None = None  # default: the model's inference preset
    dense_layers: int | None = None  # default: the preset (Wan 1, HunyuanVideo 0)
    adjacent: str = "full"
    sink: bool | None = None
    attention_backend: str = "auto"

    # optimisation
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    max_steps: int = 1000
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "cosine"  # a diffusers.optimization.SchedulerType name (LR_SCHEDULERS)
    warmup_steps: int = 50
    mixed_precision: str = "bf16"  # "no", "fp16", "bf16"
    # with several processes: "ddp" (each holds the whole base) or "fsdp" (the frozen base sharded across them with
    # FSDP2, one block gathered at a time; the LoRA stays replicated, so checkpoints are the same as with ddp)
    distributed: str = "ddp"
    # > 1: each sample's sequence split over this many processes with Ulysses (Diffusers' context parallelism,
    # radial attention on the whole sequence per rank's heads); DDP across the groups when there are more processes
    sequence_parallel: int = 1
    gradient_checkpointing: bool = True
    timestep_sampling: str = "logit_normal"  # or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    flow_shift: float | None = None  # default: the pipeline scheduler's shift (Wan 3.0/5.0, HunyuanVideo 7.0)
    guidance: float = 6.0  # HunyuanVideo's embedded guidance during training
    # e.g. 0.999: an EMA of the LoRA weights, which the export and the validation renders use. With warmup as
    # diffusers' EMAModel (use_ema_warmup=False): after optimizer step n (counted from the run's start) the decay is
    # 0 for n = 1, then min(ema_decay, n / (9 + n)), so a short run still moves the EMA away from the init.
    ema_decay: float | None = None
    seed: int = 0

    # bookkeeping
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    log_every: int = 10
    log_with: str | None = None  # "tensorboard" (if installed)
    validate_every: int = 0  # 0: never
    validation_prompt: str = "a cat dancing on the beach at sunset"
    validation_frames: int | None = None  # default: num_frames
    validation_steps: int = 20

    # ----------------------------------------------------------------------------------------------------------

    @property
    def family(self) -> str | None:
        """The model family of a built-in tiny model (``"wan"``, ...); ``None`` for a Hub id or a folder, whose family
        is known only once the pipeline is loaded (training reads it from the transformer's class)."""
        models = tiny_models()
        return models[self.model][0].name if self.model in models else None

    def clip_fps(self, family_fps: float) -> float | None:
        """The clips' sampling rate: ``fps``, or the family's frame rate ``family_fps`` for ``"auto"``."""
        return float(family_fps) if self.fps == "auto" else self.fps

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def targets(self) -> str | list[str] | None:
        """``target_modules``, or the family's default (``None`` while the family is unknown: see :attr:`family`)."""
        if self.target_modules is not None:
            return self.target_modules
        return DEFAULT_TARGETS[self.family] if self.family is not None else None

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "cache"

    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Check every value (raises :class:`ConfigError` naming the key); ``check_paths``: also that ``data_dir``
        (and ``manifest``) exist and that every output folder is writable, which a template config without its data
        skips. Returns ``self``."""
        def bad(key: str, msg: str):
            raise ConfigError(f"{key}: {msg}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(f.name, f"must be a finite number, got {value}")

        tiny = tuple(tiny_models())
        if not self.model:
            bad("model", "give a Hub id, a local pipeline folder, or one of " + ", ".join(tiny))
        if self.model.startswith("tiny-") and self.model not in tiny:
            bad("model", f"unknown tiny model {self.model!r}; valid: {', '.join(tiny)}")
        if self.revision is not None:
            if self.model in tiny or Path(self.model).expanduser().exists():
                bad("revision", f"names a version of a Hub repository, and model {self.model} is "
                                f"{'a tiny model' if self.model in tiny else 'a local folder'}; drop revision")
            if self.dfloat11 is not None:
                bad("revision", "with dfloat11: download that revision to a folder first (hf download MODEL "
                                "--revision REVISION --local-dir DIR) and give the folder as model")
        for key in ("num_frames", "height", "width", "rank", "max_steps", "batch_size", "gradient_accumulation_steps",
                    "checkpoint_every", "keep_checkpoints", "log_every", "validation_steps"):
            if getattr(self, key) < 1:
                bad(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "validate_every", "seed"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0, got {getattr(self, key)}")
        for key in ("learning_rate", "adam_epsilon", "max_grad_norm"):
            if not getattr(self, key) > 0:
                bad(key, f"must be > 0, got {getattr(self, key)}")
        if isinstance(self.fps, str) and self.fps != "auto":
            try:  # --set fps=24 arrives as text (the option also takes the word "auto")
                self.fps = float(self.fps)
            except ValueError:
                bad("fps", f'must be a number > 0, "auto" (the model family\'s frame rate) or null (consecutive '
                    f"frames), got {self.fps!r}")
        if self.fps not in ("auto", None) and not (math.isfinite(self.fps) and self.fps > 0):
            bad("fps", f'must be > 0, "auto" or null (consecutive frames), got {self.fps}')
        if self.alpha is not None and not self.alpha > 0:
            bad("alpha", f"must be > 0, got {self.alpha}")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if not (0 <= self.weight_decay and 0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            bad("weight_decay/adam_beta1/adam_beta2", "weight_decay >= 0 and betas in [0, 1)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            bad("ema_decay", f"must be in (0, 1) or null, got {self.ema_decay}")
        if self.flow_shift is not None and not self.flow_shift > 0:
            bad("flow_shift", f"must be > 0, got {self.flow_shift}")
        if self.logit_std <= 0:
            bad("logit_std", f"must be > 0, got {self.logit_std}")
        if self.guidance < 0:
            bad("guidance", f"must be >= 0, got {self.guidance}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            hint = difflib.get_close_matches(self.lr_scheduler, LR_SCHEDULERS, n=1)
            did = f"did you mean {hint[0]!r}? " if hint else ""
            bad("lr_scheduler", f"unknown schedule {self.lr_scheduler!r}; {did}valid: {', '.join(LR_SCHEDULERS)}")
        if isinstance(self.target_modules, str):
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                bad("target_modules", f"not a valid regular expression ({exc}): {self.target_modules!r}; give a "
                    "regex over module names (full match) or a list of module name suffixes")
        choices = {"attention": ("radial", "dense"), "mixed_precision": ("no", "fp16", "bf16"),
                   "distributed": ("ddp", "fsdp"),
                   "timestep_sampling": ("logit_normal", "uniform"), "adjacent": ("full", "half"),
                   "attention_backend": ("auto", "torch", "triton", "flex"), "log_with": (None, "tensorboard")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(key, f"must be one of {', '.join(map(str, allowed))}; got {getattr(self, key)!r}")
        if self.quant is not None:
            from radial_diffusers.quant import SCHEMES, lora_refusal

            if self.quant not in SCHEMES:
                bad("quant", f"unknown scheme {self.quant!r}; choose one of {', '.join(SCHEMES)}")
            refusal = lora_refusal(self.quant)  # dynamic schemes (wrong gradients), int4-weight (PEFT cannot wrap it)
            if refusal is not None:
                bad("quant", refusal)
            if self.dfloat11 is not None:
                bad("quant", "dfloat11 and quant are alternatives for the base weights; set only one")
        if self.quant_group_size < 1:
            bad("quant_group_size", f"must be >= 1, got {self.quant_group_size}")
        if self.distributed == "fsdp":
            from .fsdp import fsdp_available

            reason = fsdp_available()
            if reason is not None:
                bad("distributed", f"fsdp: {reason}; use distributed: ddp or upgrade torch")
        if not isinstance(self.sequence_parallel, int) or self.sequence_parallel < 1:
            bad("sequence_parallel", f"must be an integer >= 1, got {self.sequence_parallel!r}")
        if self.sequence_parallel > 1 and self.distributed == "fsdp":
            bad("sequence_parallel", "sequence parallelism runs with distributed: ddp (the groups share the LoRA "
                "by DDP); fsdp with it is not supported yet")
        if self.distributed == "fsdp" and (self.dfloat11 is not None or self.quant is not None):
            bad("distributed", "fsdp shards plain base weights; a DFloat11 or quantized base is already the "
                "memory-saving alternative: use distributed: ddp with it, or drop dfloat11/quant")
        if self.dfloat11 is not None and self.mixed_precision != "bf16":
            bad("mixed_precision", "a DFloat11 base holds BF16 weights: set mixed_precision: bf16")
        if self.validation_frames is not None and self.validation_frames < 1:
            bad("validation_frames", f"must be >= 1 or null (num_frames), got {self.validation_frames}")
        if self.max_sequence_length is not None and self.max_sequence_length < 1:
            bad("max_sequence_length", f"must be >= 1 text tokens or null (the pipeline's), got "
                f"{self.max_sequence_length}")
        if self.expert not in (None, "high_noise", "low_noise"):
            bad("expert", f"must be high_noise, low_noise or null, got {self.expert!r}")
        self._check_family_geometry()
        self._check_model_before_loading()
        if check_paths:
            self._check_paths()
            self._check_writable()
        if self.attention == "radial":
            self.radial_config()  # RadialConfig's own checks (block size, decay)
        return self

    def _check_family_geometry(self) -> None:
        """Frames and sides against the model family's rule (Wan: 4k+1 and multiples of 16; LTX-Video 8k+1 and 32;
        Mochi 6k+1) where the family is known without loading (a tiny model, or a local / cached
        ``model_index.json``); training checks again against the loaded pipeline's own VAE before encoding."""
        from radial_diffusers.pipelines import family_before_loading, frames_rule_problem

        family = family_before_loading(self.model)
        if family is None:
            return
        side = family.vae_spatial * max(family.mask_patch[1:])
        for frames, key in ((self.num_frames, "num_frames"), (self.validation_frames, "validation_frames")):
            problem = None if frames is None else frames_rule_problem(
                frames, self.height, self.width, temporal=family.vae_temporal, side=side, what=family.label,
                side_why=f" (VAE {family.vae_spatial}x, patch {max(family.mask_patch[1:])})")
            if problem is not None:
                which, reason = problem
                key, value = ((key, frames), ("height", self.height), ("width", self.width))[which]
                raise ConfigError(f"{key}: got {value}; {reason}")

    def _check_model_before_loading(self) -> None:
        """What can be told before the model loads (for a real checkpoint: a download and minutes of loading): a
        family that does not train (a tiny model: its variant, and whether it is image-to-video), a two-expert
        pipeline (a local or cached ``model_index.json``) without ``expert``, a ``dfloat11`` path that does not
        exist. Training checks the loaded pipeline again."""
        from radial_diffusers._hub import is_hub_id
        from radial_diffusers.pipelines import _experts_in_index, family_before_loading
        from radial_diffusers.training_adapters import training_refusal

        family = family_before_loading(self.model)
        if family is not None:
            tiny = tiny_models().get(self.model)
            if tiny is not None:
                variant = next((v for v in family.variants if v.tiny == self.model), None)
                refusal = training_refusal(family, variant, self.model, tiny[1].image_to_video, loaded=False)
            elif not any("training" in v.features for v in (family, *family.variants)):
                refusal = training_refusal(family, None, self.model, False, loaded=False)
            else:  # a variant (known once loaded) may train
                refusal = None
            if refusal is not None:
                raise ConfigError(refusal)
        if self.expert is None and _experts_in_index(self.model) > 1:
            raise ConfigError(f"expert: {self.model} has two experts (transformer for high noise, transformer_2 for "
                              "low noise); train one at a time: set expert: high_noise or expert: low_noise")
        if self.dfloat11 is not None and not Path(self.dfloat11).expanduser().exists() and not is_hub_id(
                self.dfloat11):
            raise ConfigError(f"dfloat11: {self.dfloat11!r}: no such file or directory; give a DF11 checkpoint "
                              "(a folder, a .safetensors file or a Hub id), or null for the plain base weights")

    def _check_paths(self) -> None:
        data = Path(self.data_dir)
        if not data.is_dir():
            what = "is not a folder" if data.exists() else "does not exist"
            raise ConfigError(f"data_dir: {str(data)!r} {what}; give the folder that holds the training videos (a "
                              "relative path in a config file is relative to the file)")
        if self.manifest is not None:
            path = Path(self.manifest) if Path(self.manifest).is_absolute() else data / self.manifest
            if not path.is_file():
                raise ConfigError(f"manifest: {str(path)!r} does not exist (a relative manifest is relative to "
                                  "data_dir); give a .jsonl / .csv file, or null for clip.mp4 + clip.txt pairs")
            if path.suffix.lower() not in (".jsonl", ".csv"):
                raise ConfigError(f"manifest: {str(path)!r} has an unknown extension; use .jsonl or .csv")

    def _check_writable(self) -> None:
        """Every folder the run writes (output_dir and its checkpoints / final / logs / validation, and the cache
        unless it is complete already) can take new files: a folder not made yet is checked where it will be made."""
        from radial_diffusers._io import NotWritableError, check_writable

        out = Path(self.output_dir)
        # the subfolders, not output_dir itself: check_writable also checks a folder's parent, which the run never
        # writes (and a subfolder's parent is output_dir)
        places = [("output_dir", out / sub) for sub in ("checkpoints", "final", "logs", "validation")]
        if not (self.cache_path / "manifest.json").is_file():  # a complete cache is only read
            places.append(("cache_dir", self.cache_path / "manifest.json"))
        for key, path in places:
            try:
                check_writable(path, key)
            except NotWritableError as exc:
                raise ConfigError(f"{exc} (another location: --set {key}=PATH)") from None

    def radial_config(self):
        """The :class:`radial_diffusers.RadialConfig` of the training step: every step sparse (dense layers kept)."""
        from radial_diffusers import RadialConfig

        try:
            return RadialConfig(dense_layers=self.dense_layers, dense_steps=0, last_dense_steps=0,
                                decay_factor=self.decay_factor, block_size=self.block_size, adjacent=self.adjacent,
                                sink=self.sink, backend=self.attention_backend)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"attention settings: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _options(hint: Any) -> tuple:
    """The alternatives of a type hint (``str | None`` -> ``(str, NoneType)``; a plain type -> itself)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` coerced to the annotated type (int -> float allowed; yes/no/on/off -> bool), else a ConfigError."""
    options = _options(hint)
    for opt in options:
        if opt is type(None) and value is None:
            return None
        if opt is bool and isinstance(value, bool):
            return value
        if opt is bool and isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is str and isinstance(value, str):
            return value
        if typing.get_origin(opt) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


@functools.lru_cache(maxsize=1)
def _yaml_loader() -> type:
    """PyYAML's safe loader with YAML 1.2 core-schema scalars. PyYAML follows YAML 1.1, where ``no``/``off`` are
    False (``mixed_precision: no`` would fail), ``1e-4`` is text, ``010`` is octal and ``2024-01-01`` a date."""
    import yaml

    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp"}

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in replaced]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:int",  # before float: an integer is not read as 10.0
                                 re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
        r"|\.(?:nan|NaN|NAN))$"), list("-+.0123456789"))

    def construct_int(loader, node) -> int:
        text = loader.construct_scalar(node).replace("_", "")
        for prefix, base in (("0o", 8), ("0x", 16)):
            if text.startswith(prefix):
                return int(text[2:], base)
        return int(text)  # decimal, also with leading zeros

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Loader


def _yaml_load(text: str, what: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: not valid YAML: {exc}") from None


def _parse_override(item: str, hints: dict[str, Any]) -> tuple[str, Any]:
    """``key=value`` -> (key, value). A text option takes the value as typed, so ``no``, ``off``, ``a: b`` and
    ``#`` mean themselves (quoted values, ``null`` where the option allows it and ``[..]`` lists are YAML); any
    other option's value is a YAML scalar."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    if not text:
        return key, None
    options = _options(hints[key]) if key in hints else ()
    if str not in options:
        return key, _yaml_load(text, f"--set {key}")
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
    null = type(None) in options and text in ("null", "Null", "NULL", "~")
    flow_list = text.startswith("[") and any(typing.get_origin(o) is list for o in options)
    return key, _yaml_load(text, f"--set {key}") if quoted or null or flow_list else text


def load_config(source: str | Path | dict, overrides: list[str] | None = None, *,
                check_paths: bool = True) -> TrainConfig:
    """Read a YAML/JSON file (or a dict), apply ``key=value`` overrides, check every value; returns the config.

    Relative ``data_dir`` / ``output_dir`` / ``cache_dir`` / ``dfloat11`` / ``model`` paths in a file are relative to
    the file (``manifest`` to ``data_dir``); paths given as overrides are relative to the current directory.
    ``check_paths=False`` skips the checks that ``data_dir`` and ``manifest`` exist and that the output folders are
    writable (a template without its data).

    Example:
        >>> cfg = load_config({"model": "tiny-wan", "data_dir": ".", "output_dir": "o", "num_frames": 9})
        >>> cfg.num_frames, cfg.family
        (9, 'wan')
    """
    base = None
    if isinstance(source, dict):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not a YAML / JSON file" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {str(path)!r} {what}")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        else:
            raw = _yaml_load(text, str(path))
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of options at the top level")
        base = path.parent
    if base is not None:
        for key in ("data_dir", "output_dir", "cache_dir"):
            if isinstance(raw.get(key), str) and raw[key] and not Path(raw[key]).is_absolute():
                raw[key] = str(base / raw[key])
        for key in ("dfloat11", "model"):
            if isinstance(raw.get(key), str) and raw[key] and (base / raw[key]).exists():
                raw[key] = str(base / raw[key])
    hints = typing.get_type_hints(TrainConfig)
    for item in overrides or []:
        key, value = _parse_override(item, hints)
        raw[key] = value
    known = {f.name for f in fields(TrainConfig)}
    unknown = [k for k in raw if k not in known]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"unknown option {unknown[0]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "") +
                          f" (options: {', '.join(sorted(known))})")
    missing = [f.name for f in fields(TrainConfig) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(missing)}")
    values = {k: _check_type(k, v, hints[k]) for k, v in raw.items()}
    return TrainConfig(**values).validate(check_paths)


def add_cli_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training command's arguments, the same for ``radial-diffusers train`` and ``python -m lora_training.train``
    (kept here, free of torch, so that ``radial-diffusers --help`` stays fast). Returns ``parser``."""
    parser.add_argument("config", help="YAML or JSON training config (see examples/train/)")
    parser.add_argument("--resume", default=None,
                        help="'latest' (the newest checkpoint of output_dir) or a checkpoint folder; resuming from an "
                        "older checkpoint of output_dir forks the run: its later checkpoints are moved to "
                        "checkpoints/superseded-after-step-N/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config option (repeatable), e.g. --set max_steps=200 or "
                        "--set mixed_precision=no (a text option takes the value as typed)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="N",
                        help="stop after optimizer step N, with a checkpoint there and no export; the run keeps the "
                        "LR schedule of its max_steps, so a later --resume latest continues exactly as if it had not "
                        "stopped (lowering max_steps instead changes the schedule)")
    parser.add_argument("--allow-schedule-change", action="store_true",
                        help="resume although " + ", ".join(SCHEDULE_OPTIONS) + " differ from the checkpoint's: "
                        "the LR schedule is rebuilt from the new values and continues at the checkpoint's step (the "
                        "result is no longer that of an uninterrupted run); without it such a resume is refused")
    parser.add_argument("--preprocess-only", action="store_true", help="build the encoded cache and stop")
    return parser
