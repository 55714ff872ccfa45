"""Load a DF11 checkpoint into a Diffusers transformer (decoded per block on the fly), and undo it.

``load_dfloat11`` checks everything first (config, version, names, shapes, split positions, stream structure,
checksums) and only then touches the model, so a bad checkpoint leaves the model as it was.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, open_checkpoint, weights_crc32
from .codec import MAX_CODE_LEN, DF11Unit, _unpack5, bf16_bytes, decode_exponents
from .._empty import empty_model  # noqa: F401  (re-exported: rd.dfloat11.empty_model)
from .._quantized import is_quantized
from .hooks import _COMPUTE_DTYPES, _DTYPE, DF11DecodeHook, install, is_compressed_linear, uninstall, unit_hook
from .patterns import base_linear, claim, has_peft_layers, join, linear_paths, weight_shape

__all__ = ["load_dfloat11", "decompress", "is_dfloat11", "empty_model"]

_GUARDED = ("save_pretrained", "fuse_lora", "fuse_qkv_projections")


def is_dfloat11(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a DF11 unit (decoded on the fly)."""
    return any(unit_hook(m) is not None for m in model.modules())


# ------------------------------------------------------------------------------------------------------------------
# validation (no mutation)
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _UnitPlan:
    name: str
    attrs: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    requires_grad: tuple[bool, ...]


def _unit_names(ckpt: Checkpoint) -> dict[str, str]:
    """module name -> matching regex, for every ``M.encoded_exponent`` of the checkpoint whose ``M`` matches."""
    out = {}
    for key in ckpt.entries:
        if not key.endswith(".encoded_exponent"):
            continue
        name = key[: -len(".encoded_exponent")]
        hits = [rx for rx in ckpt.df11.pattern_dict if re.fullmatch(rx, name)]
        if not hits:
            raise ValueError(f"checkpoint unit {name!r} matches no regex of its pattern_dict "
                             f"{list(ckpt.df11.pattern_dict)}: the checkpoint is inconsistent")
        out[name] = hits[0]
    if not out:
        raise ValueError(f"{ckpt.root}: no DF11 unit (no '*.encoded_exponent' tensor) in the checkpoint")
    return out


def _check_all_units_present(model: nn.Module, ckpt: Checkpoint, unit_names: dict[str, str], where: str) -> None:
    """Raise ``ValueError`` when a module of ``model`` matches the checkpoint's ``pattern_dict`` but the checkpoint has
    no unit for it (a lost unit file): its Linears would silently keep the model's own weights."""
    regexes = [re.compile(rx) for rx in ckpt.df11.pattern_dict]
    lost = [name for name, _ in model.named_modules()
            if name not in unit_names and any(rx.fullmatch(name) for rx in regexes)]
    if lost:
        files = sorted({name.replace(".", "_") + ".safetensors" for name in lost})
        raise ValueError(f"{where} lacks the DF11 units of {len(lost)} modules its pattern_dict matches, e.g. "
                         f"{lost[:4]} (a missing file such as {files[0]}? the checkpoint is incomplete): copy or "
                         "download it again, or compress the model again")


def _plan(model: nn.Module, ckpt: Checkpoint) -> tuple[list[_UnitPlan], dict[str, str]]:
    """Check the checkpoint against ``model``; return the units and the plain tensors (state key -> checkpoint key)."""
    where = f"DF11 checkpoint {ckpt.root}"
    bad_model = f"{where} does not match {type(model).__name__}"
    modules = dict(model.named_modules())
    units: list[_UnitPlan] = []
    covered: set[str] = set()
    claimed: dict[int, tuple[str, str]] = {}
    unit_names = _unit_names(ckpt)
    _check_all_units_present(model, ckpt, unit_names, where)
    for name, regex in sorted(unit_names.items()):
        module = modules.get(name)
        if module is None:
            raise ValueError(f"{bad_model}: the model has no module {name!r} (checkpoint of another model?)")
        for buf in DF11Unit.BUFFER_NAMES:
            key = f"{name}.{buf}"
            if key not in ckpt.entries:
                raise ValueError(f"{where}: unit {name!r} lacks tensor {key!r} (truncated checkpoint?)")
            want = torch.int64 if buf == "split_positions" else torch.uint8
            if ckpt.dtype(key) != want:
                raise ValueError(f"{where}: {key} is {ckpt.dtype(key)}, expected {want}")
            covered.add(key)
        attrs = linear_paths(ckpt.df11.pattern_dict[regex])
        shapes, grads = [], []
        for attr in attrs:
            full = join(name, attr)
            try:
                lin = base_linear(module.get_submodule(attr))
            except AttributeError:
                raise ValueError(f"{bad_model}: pattern lists {attr!r} but {full} does not exist") from None
            shape = weight_shape(lin)
            if shape is None:
                raise ValueError(f"{bad_model}: {full} is a {type(lin).__name__}, not an nn.Linear or nn.Embedding "
                                 "(the layers whose weights DF11 units hold)")
            if is_quantized(lin._parameters.get("weight")):
                raise ValueError(f"{full} is quantized: DF11 and quantization are alternatives per weight "
                                 "(load DF11 weights into an unquantized model)")
            claim(claimed, lin, full, name, f"{where} cannot be loaded into {type(model).__name__}: ")
            shapes.append(shape)
            grads.append(bool(getattr(lin._parameters.get("weight"), "requires_grad", False)))
            covered.add(f"{full}.weight")
        n = sum(a * b for a, b in shapes)
        n_ckpt = math.prod(ckpt.shape(f"{name}.sign_mantissa"))
        if n_ckpt != n:
            raise ValueError(f"{bad_model}: unit {name!r} holds {n_ckpt} weights, the model's Linears {list(attrs)} "
                             f"need {n} (checkpoint of another model size?)")
        if ckpt.shape(f"{name}.split_positions") != (len(attrs) - 1,):
            raise ValueError(f"{where}: {name}.split_positions has shape {ckpt.shape(f'{name}.split_positions')}, "
                             f"expected ({len(attrs) - 1},) for {len(attrs)} Linears")
        units.append(_UnitPlan(name, attrs, tuple(shapes), tuple(grads)))

    state = model.state_dict(keep_vars=True)
    plain: dict[str, str] = {}
    unknown = []
    for key in ckpt.entries:
        if key in covered:
            continue
        if key.rsplit(".", 1)[-1] in DF11Unit.BUFFER_NAMES and key.rsplit(".", 1)[0] in modules:
            unknown.append(key)  # a unit buffer of a module that matches no pattern
            continue
        target = state.get(key)
        if target is None:
            unknown.append(key)
            continue
        if tuple(target.shape) != ckpt.shape(key):
            raise ValueError(f"{bad_model}: {key} has shape {ckpt.shape(key)} in the checkpoint and "
                             f"{tuple(target.shape)} in the model")
        plain[key] = key
    if unknown:
        raise ValueError(f"{bad_model}: {len(unknown)} checkpoint tensors have no place in the model, e.g. "
                         f"{unknown[:4]}")
    if ckpt.model_config is not None:  # our checkpoints say what they hold: the whole model, of one class
        _check_whole_model(model, ckpt, covered | set(plain), bad_model)
    missing = [k for k, v in state.items() if k not in covered and k not in plain and v.device.type == "meta"]
    if missing:
        raise ValueError(f"{bad_model}: {len(missing)} model weights are in neither the checkpoint nor the model "
                         f"(it was built without weights), e.g. {missing[:4]}")
    return units, plain


def _check_whole_model(model: nn.Module, ckpt: Checkpoint, covered: set[str], bad_model: str) -> None:
    """A checkpoint that records its model (``config.json`` with ``_class_name``, as ours do) holds every parameter of
    that class: refuse another class (a subclass of it is fine), and a checkpoint missing parameters (a lost
    non-block file), which would otherwise leave them as the model had them. Buffers are not required: a newer
    Diffusers may add one that an older checkpoint lacks."""
    saved = ckpt.model_config.get("_class_name")
    if saved is not None and saved not in {c.__name__ for c in type(model).__mro__}:
        raise ValueError(f"{bad_model}: it holds a {saved} (its config.json); load it into a {saved}, or compress "
                         f"this model")
    lost = [k for k, _ in model.named_parameters() if k not in covered]
    if lost:
        raise ValueError(f"{bad_model}: {len(lost)} model parameters are not in the checkpoint, e.g. {lost[:4]} (a "
                         "missing or truncated file of it, such as diffusion_pytorch_model.safetensors for the "
                         "tensors outside the blocks?)")


def _check_unit_data(name: str, t: dict[str, torch.Tensor], plan: _UnitPlan, tpb: int, bpt: int) -> None:
    """Structural checks of one unit's stream metadata (what the decoder relies on)."""
    luts, outpos = t["luts"], t["output_positions"]
    if luts.dim() != 2 or luts.shape[1] != 256 or not 2 <= luts.shape[0] <= 18:
        raise ValueError(f"corrupted DF11 unit {name}: luts has shape {tuple(luts.shape)}")
    n_bytes = t["encoded_exponent"].numel()
    n = t["sign_mantissa"].numel()
    n_blocks = math.ceil(n_bytes / (bpt * tpb))
    if outpos.numel() != 4 * (n_blocks + 1):
        raise ValueError(f"corrupted DF11 unit {name}: output_positions has {outpos.numel()} bytes, expected "
                         f"{4 * (n_blocks + 1)} for {n_bytes} stream bytes")
    pos = outpos.contiguous().numpy().view("<u4").astype(np.int64)
    if pos[0] != 0 or pos[-1] != n or np.any(np.diff(pos) < 0):
        raise ValueError(f"corrupted DF11 unit {name}: output_positions are not a 0..{n} non-decreasing sequence")
    if t["gaps"].numel() < math.ceil(5 * tpb * n_blocks / 8):
        raise ValueError(f"corrupted DF11 unit {name}: gaps has {t['gaps'].numel()} bytes, expected at least "
                         f"{math.ceil(5 * tpb * n_blocks / 8)}")
    split = t["split_positions"].tolist()
    expect = np.cumsum([a * b for a, b in plan.shapes])[:-1].tolist()
    if split != expect:
        raise ValueError(f"DF11 unit {name}: split_positions {split[:4]}... do not match the Linear sizes of "
                         f"{list(plan.attrs)} (pattern order differs from the one the checkpoint was written with?)")


_VERIFY = (True, False, "decode")
_VERIFY_CHUNK = 1 << 22  # elements per pass of the stream check (bounded int64 temporaries)


def _verify_stream(name: str, unit: DF11Unit) -> np.ndarray:
    """Trial-decode the unit of module ``name`` on the CPU and check its stream against all the format stores.

    A structural check: the only one a checkpoint without CRC-32s (the official layout) allows. Raises
    ``ValueError`` when the code-length row is not a prefix code (Kraft sum > 1, lengths > 32), a code inside the
    data is one the tables do not define or decodes to a symbol without a code length, a CUDA block's first element
    disagrees with ``output_positions``, a thread's first code disagrees with its ``gaps`` entry (every thread's
    decode must end where the next one starts), the data runs past the end of ``encoded_exponent``, or the stream
    holds more than ``n_elements`` codes (the last code must end in the stream's last byte).
    Silent: whatever keeps these consistent, e.g. a flipped sign/mantissa bit, an exponent code replaced by another
    code of the same length, or most changes of ``encoded_exponent`` bytes (the codes resynchronise within a thread's
    chunk); :func:`_check_weights_crc` catches those where the writer stored the weights' CRC-32.
    """
    where = f"corrupted DF11 unit {name}"
    row = unit.luts[-1].contiguous().numpy().astype(np.int64)
    if row.max() > MAX_CODE_LEN or (2.0 ** -row[row > 0]).sum() > 1.0:
        raise ValueError(f"{where}: the code-length row of luts is not a prefix code of codes <= {MAX_CODE_LEN} bits")
    try:
        exp = decode_exponents(unit)
    except ValueError as exc:
        raise ValueError(f"{where}: {str(exc).removeprefix('corrupted DF11 unit: ')}") from None
    chunk_bits, stream_bits = 8 * unit.bytes_per_thread, 8 * unit.encoded_exponent.numel()
    lanes_all = unit.n_blocks * unit.threads_per_block
    gaps = _unpack5(unit.gaps.contiguous().numpy(), -(-lanes_all // 8) * 8).astype(np.int64)
    bit, prev_lane = 0, -1  # start bit of the next element; thread of the last element checked
    for a in range(0, exp.size, _VERIFY_CHUNK):
        length = row[exp[a : a + _VERIFY_CHUNK]]
        start = np.cumsum(length) - length + bit
        bit = int(start[-1] + length[-1])
        if bit > stream_bits:
            raise ValueError(f"{where}: the decoded codes run past the end of the {stream_bits}-bit stream")
        # the threads whose chunk starts in this pass, and the first element of each (its code starts in the chunk)
        lanes = np.arange(prev_lane + 1, int(start[-1]) // chunk_bits + 1)
        first = np.searchsorted(start, lanes * chunk_bits)
        prev_lane = int(lanes[-1]) if lanes.size else prev_lane
        bad = np.flatnonzero(gaps[lanes] != start[first] - lanes * chunk_bits)
        if bad.size:
            raise ValueError(f"{where}: thread {int(lanes[bad[0]])} should start at element {a + int(first[bad[0]])} "
                             "(by the decoded code lengths) but its gaps entry differs")
    if stream_bits - bit >= 8:  # both writers end the stream in the byte of the last code (official: EOF prefix)
        raise ValueError(f"{where}: {stream_bits - bit} bits follow the last of the {exp.size} codes (at most the 7 "
                         "padding bits of its byte may): the stream holds a different number of codes")
    return exp


def _check_weights_crc(name: str, unit: DF11Unit, exponents: np.ndarray, expected: int | None) -> None:
    """Compare the CRC-32 of the BF16 weights of module ``name``'s unit (its ``exponents`` as
    :func:`_verify_stream` decoded them) with ``expected``, the one of the original weights that :func:`compress`
    stored (``None``: the checkpoint has none, nothing to do). Catches any content error, including the stream
    corruptions that keep every code boundary consistent."""
    if expected is None:
        return
    if weights_crc32([torch.from_numpy(bf16_bytes(unit, exponents))]) != expected:
        raise ValueError(f"corrupted DF11 unit {name}: its decoded weights fail the CRC-32 of the original weights "
                         "stored when it was compressed; download or compress the checkpoint again")


# ------------------------------------------------------------------------------------------------------------------
# load / decompress
# ------------------------------------------------------------------------------------------------------------------


def _as_model_dtype(value: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A plain checkpoint tensor in the dtype of the model tensor it replaces, as the official loader's ``copy_``
    gives it (a float32 model stays float32); a model built without weights (meta) takes the checkpoint's dtype."""
    if old.device.type == "meta" or not (old.is_floating_point() and value.is_floating_point()):
        return value
    return value.to(old.dtype)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it in a fresh allocation where its storage is not 64-byte aligned (a tensor read out of a
    safetensors file can start anywhere). CPU kernels take other code paths on unaligned data: a batch-1 float32
    Linear over an unaligned weight differed from the same weight aligned in the last bit, which breaks the DF11
    model's bit-identity with the BF16 one (Kandinsky 5's float32 modulation and time embedding)."""
    return t.clone() if t.data_ptr() % 64 else t


def _refuse(model: nn.Module, name: str, *args, **kwargs):
    raise RuntimeError(
        f"{type(model).__name__}.{name}() on a DFloat11 model: its compressed Linears hold placeholders, not "
        "weights. Save a DF11 checkpoint with radial_diffusers.dfloat11.compress(model, dir), or call "
        "radial_diffusers.dfloat11.decompress(model) first (LoRA cannot be fused into compressed weights; "
        "keep it as an adapter)"
    )


# PEFT LoRA inits that rewrite the base weight (W -> W - scale * B @ A): impossible without re-encoding
_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")


def check_adapter_config(config) -> None:
    """Raise ``ValueError`` for a PEFT config whose initialisation rewrites the base weight (PiSSA, CorDA, OLoRA,
    LoftQ, LoRA-GA): a DF11 weight cannot change without re-encoding. DoRA and inits that only read the base weight
    (MiCA) work: the weight is decoded when they read it."""
    init = getattr(config, "init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_REWRITING_INITS):
        raise ValueError(
            f"init_lora_weights={init!r} rewrites the base weights, which are DFloat11-compressed here (they cannot "
            "change without re-encoding). Use another init (DoRA and the default inits work), or call "
            "radial_diffusers.dfloat11.decompress(model) first"
        )


def _add_adapter(model: nn.Module, adapter_config, *args, **kwargs):
    check_adapter_config(adapter_config)  # before PEFT touches the model
    return type(model).add_adapter(model, adapter_config, *args, **kwargs)


def _guard(model: nn.Module) -> None:
    """Instance attributes that refuse saving / fusing and check adapter configs. ``functools.partial`` (not
    closures): ``copy.deepcopy`` of the model then binds the copy's guards to the copy."""
    import functools

    for name in _GUARDED:
        if hasattr(model, name):
            object.__setattr__(model, name, functools.partial(_refuse, model, name))
    if hasattr(model, "add_adapter"):
        object.__setattr__(model, "add_adapter", functools.partial(_add_adapter, model))


def _unguard(model: nn.Module) -> None:
    for name in (*_GUARDED, "add_adapter"):
        if name in model.__dict__:
            object.__delattr__(model, name)


def _group_offloaded(model: nn.Module) -> bool:
    for m in model.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None and any("group_offloading" in name for name in registry.hooks):
            return True
    return False


def load_dfloat11(
    model: nn.Module | str | os.PathLike | None,
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    *,
    subfolder: str | None = None,
    pattern: dict[str, list[str]] | None = None,
    cpu_offload: bool = False,
    verify: bool | str = True,
    progress: bool = True,
) -> nn.Module:
    """Load a DF11 checkpoint (official ``dfloat11`` >= 0.2 or ours) into ``model``; returns the model.

    Args:
        model: the transformer to load into: a model with weights (e.g. the BF16 one; its listed Linear weights are
            replaced and decoded in their dtype, the rest overwritten from the checkpoint in the model's own dtype, as
            the official loader copies them), one built without weights (``empty_model``), or a
            local path / Hub id of the *original* model, whose config alone builds it (no BF16 weights are
            downloaded), or ``None`` when ``path`` is a checkpoint written by :func:`compress` (it carries the
            model config).
        path: checkpoint directory, single ``.safetensors`` file, or Hub repo id (e.g.
            ``"DFloat11/Wan2.1-T2V-14B-Diffusers-DF11"``).
        device: where the compressed weights and the rest of the model go (default: the model's device, CPU for a
            model without weights). Decoding runs on the device of each block's compressed buffers.
        subfolder: subfolder of ``model`` (a path / Hub id) with the transformer config (default: ``transformer``
            for a pipeline repo).
        pattern: ``pattern_dict`` for official single files (they carry none). A checkpoint with its own
            ``pattern_dict`` is read with that one; passing a different one is a ``ValueError``.
        cpu_offload: keep the compressed weights in (pinned) CPU memory and copy each block to ``device`` when it
            runs (``device`` must then be given).
        verify: ``True``: check the CRC-32s of the stored tensors that our checkpoints carry (a pass over the
            data); official checkpoints carry none and get structural checks of the metadata only. ``"decode"``:
            also trial-decode every unit on the CPU and check the stream's structure against its metadata (code
            table is a prefix code, every code defined, block starts = ``output_positions``, thread starts = ``gaps``,
            code count = element count). For units written by :func:`compress` (their file records the CRC-32 of
            the original BF16 weights) it then decodes the weights and compares that CRC-32, which detects any
            content change. For checkpoints without it (official ones) it checks structure only: Huffman codes
            resynchronise, so many stream corruptions keep that structure and load wrong weights undetected, as do
            a flipped sign/mantissa bit or an exponent code replaced by another of the same length. Cost: one CPU
            decode of every unit, plus a CRC-32 of its weights for our checkpoints. ``False``: no checks of the
            data.
        progress: show a progress bar.

    Each unit's Linears keep their class (PEFT LoRA wraps them as usual: ``pipe.load_lora_weights`` works) and
    get their weights decoded per call by a ``DF11DecodeHook`` registered on the block, inside any Diffusers hook
    registered later (group offloading). ``save_pretrained``/``fuse_lora`` on the result raise a clear error; use
    :func:`decompress` to get plain BF16 weights back.

    Example:
        >>> import torch, radial_diffusers as rd                                            # doctest: +SKIP
        >>> from diffusers import WanPipeline                                                # doctest: +SKIP
        >>> transformer = rd.dfloat11.load_dfloat11(                                         # doctest: +SKIP
        ...     "Wan-AI/Wan2.1-T2V-14B-Diffusers", "DFloat11/Wan2.1-T2V-14B-Diffusers-DF11", device="cuda")
        >>> pipe = WanPipeline.from_pretrained("Wan-AI/Wan2.1-T2V-14B-Diffusers", transformer=transformer,
        ...                                    torch_dtype=torch.bfloat16).to("cuda")        # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if verify not in _VERIFY or not isinstance(verify, (bool, str)):
        raise ValueError(f"verify must be True (CRC-32s), 'decode' (CRC-32s and a trial decode of every unit) or "
                         f"False, got {verify!r}")
    ckpt = open_checkpoint(path, pattern=pattern)
    if model is None:
        if ckpt.model_config is None:
            raise ValueError(
                f"{ckpt.root} carries no model config (official DF11 releases do not); pass the original model, e.g. "
                "load_dfloat11('Wan-AI/Wan2.1-T2V-14B-Diffusers', path)"
            )
        model = empty_model(ckpt.model_config)
    elif isinstance(model, (str, os.PathLike)):
        model = empty_model(model, subfolder)
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, a path/Hub id of the original model, or None; got "
                        f"{type(model).__name__}")
    if is_dfloat11(model):
        raise ValueError(f"{type(model).__name__} already holds DF11 weights; call decompress(model) first")
    if has_peft_layers(model):
        raise ValueError("load DF11 weights before adding LoRA adapters (the model has PEFT layers): load_dfloat11 "
                         "first, then pipe.load_lora_weights / add_adapter")
    if _group_offloaded(model):
        raise ValueError("group offloading is already enabled on the model: call load_dfloat11 first, then "
                         "enable_group_offload (the offloading hook must run before the per-block decode)")
    if cpu_offload and device is None:
        raise ValueError("cpu_offload=True needs the device the blocks run on, e.g. device='cuda'")

    units, plain = _plan(model, ckpt)
    tpb, bpt = ckpt.df11.threads_per_block, ckpt.df11.bytes_per_thread

    if device is not None:
        target = torch.device(device)
    else:
        real = next((p for p in model.parameters() if p.device.type != "meta"), None)
        target = real.device if real is not None else torch.device("cpu")
    store = torch.device("cpu") if cpu_offload else target
    pin = cpu_offload and torch.cuda.is_available() and target.type == "cuda"

    # Read and check everything, staged on the target device, before the model is touched.
    staged_units: dict[str, dict[str, torch.Tensor]] = {}
    bar = tqdm(total=len(units) + 1, desc="Loading DF11", unit="unit", disable=not progress)
    for u in units:
        t = {b: ckpt.load(f"{u.name}.{b}", verify=bool(verify)) for b in DF11Unit.BUFFER_NAMES}
        _check_unit_data(u.name, t, u, tpb, bpt)
        if verify == "decode":
            unit = DF11Unit.from_buffers(t, u.shapes, tpb, bpt)
            _check_weights_crc(u.name, unit, _verify_stream(u.name, unit), ckpt.unit_crcs.get(u.name))
        t = {b: (x.pin_memory() if pin else x.to(store)) for b, x in t.items()}
        staged_units[u.name] = t
        bar.update(1)
    state = model.state_dict(keep_vars=True)
    staged_plain = {k: _aligned(_as_model_dtype(ckpt.load(src, verify=bool(verify)), state[k]).to(target))
                    for k, src in plain.items()}
    bar.update(1)
    bar.close()

    # Apply (assignments only).
    for key, value in staged_plain.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = model.get_submodule(mod_name)
        if leaf in mod._parameters:
            old = mod._parameters[leaf]
            mod._parameters[leaf] = nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad))
        else:
            mod._buffers[leaf] = value
    for u in units:
        module = model.get_submodule(u.name)
        dtypes = []
        for attr in u.attrs:
            lin = base_linear(module.get_submodule(attr))
            old = lin._parameters.pop("weight")
            dtypes.append(old.dtype if old is not None and old.device.type != "meta" else None)
        t = staged_units[u.name]
        offloaded = None
        if cpu_offload:
            offloaded = {b: t[b] for b in DF11Unit.BUFFER_NAMES}
        else:
            for b in DF11Unit.BUFFER_NAMES:
                module.register_buffer(b, t[b])
        install(module, DF11DecodeHook(u.attrs, u.shapes, tpb, bpt, offloaded=offloaded,
                                       device=target if cpu_offload else None, requires_grad=u.requires_grad),
                name=u.name)
        for attr, dtype in zip(u.attrs, dtypes):  # decoded in the dtype of the weight replaced (float32 model: float32)
            if dtype in _COMPUTE_DTYPES:
                base_linear(module.get_submodule(attr)).__dict__[_DTYPE] = dtype
    if device is not None:
        model.to(target)  # what the checkpoint did not bring (non-persistent buffers such as RoPE tables) follows
    object.__setattr__(model, "_dfloat11_config", ckpt.df11.to_dict())
    _guard(model)
    return model


def decompress(model: nn.Module) -> nn.Module:
    """Replace every DF11 unit of ``model`` by plain BF16 Linear weights (decoded once) and remove the hooks.

    All units are decoded before the model is changed. Returns the model.
    """
    units = [(m, unit_hook(m)) for m in model.modules() if unit_hook(m) is not None]
    if not units:
        raise ValueError(f"{type(model).__name__} holds no DF11 weights")
    decoded = []
    with torch.no_grad():
        for module, hook in units:
            decoded.append([w.clone() for w in hook.decode(module)])
    for (module, hook), weights in zip(units, decoded):
        uninstall(module, weights)
        for b in DF11Unit.BUFFER_NAMES:
            module._buffers.pop(b, None)
    _unguard(model)
    model.__dict__.pop("_dfloat11_config", None)
    return model


def compressed_linears(model: nn.Module) -> list[str]:
    """Names of the Linears whose weights are DF11-compressed."""
    return [n for n, m in model.named_modules() if is_compressed_linear(m)]
