"""On-the-fly DF11 decoding: a Diffusers ``ModelHook`` per unit and Linears whose weight is decoded per call.

``DF11DecodeHook.pre_forward`` decodes the whole unit with one ``radial_diffusers::df11_decode`` launch into a fresh
BF16 tensor and hands each listed Linear a view of it; ``post_forward`` drops the views. The buffer is per call, not
one buffer reused by every block: autograd keeps each block's decoded weights alive until that block's backward (so
LoRA training on a DF11 base is exact), and with gradient checkpointing the recomputed forward decodes again. In
inference the caching allocator hands the freed block of memory to the next unit, so only about one decoded unit is
alive at a time.

A compressed Linear keeps its class behaviour (``isinstance(m, nn.Linear)``, PEFT wrapping) but its ``weight`` is a
property: the decoded view during the unit's forward, otherwise a stride-0 :class:`DF11Placeholder` of the right shape
and dtype on the device of the unit's compressed buffers (so PEFT places LoRA adapters on the right device, and
``model.to()`` never materialises it: ``.to()`` moves parameters and buffers, and the placeholder is neither). Reading
the placeholder's metadata (shape, dtype, device, strides) is free; reading its *values* outside the forward (PEFT
DoRA's magnitude init, MiCA, ``weight.norm()`` in user code) decodes the unit once and computes on the real weight;
*writing* it (PEFT ``merge()``, PiSSA / OLoRA / CorDA / LoftQ inits, which rewrite the base weight, ``nn.init``) raises
:class:`DF11WeightError`: compressed weights cannot change without re-encoding.

The decoded weights come in the dtype the model was last moved to (``model.to(torch.float32)``, ``.half()``,
``pipe.to(dtype)``; BF16 by default): the compressed Linear records it in ``_apply``. Only float16 / bfloat16 /
float32 / float64 are followed (a float8 storage dtype, as in layerwise casting, keeps the previous one).

``copy.deepcopy`` of a DF11 model (or of one of its units, or of a pipeline holding it) gives an independent working
copy: each unit carries a ``__deepcopy__`` that copies its tensors and registers a fresh hook on the copy (the
Diffusers hook closure and the Linears' weak owner references would otherwise still point at the original).
"""

from __future__ import annotations

import copy
import functools
import weakref

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from . import kernel  # noqa: F401  (registers torch.ops.radial_diffusers.df11_decode)
from .codec import DF11Unit
from .patterns import base_linear, weight_shape

__all__ = ["HOOK_NAME", "DF11DecodeHook", "DF11Placeholder", "DF11WeightError", "compressed_linear_class",
           "is_compressed_linear", "unit_hook"]

HOOK_NAME = "dfloat11_decode"
_WEIGHT = "_df11_weight"  # instance __dict__ slot of the decoded view
_OWNER = "_df11_owner"  # weakref to the unit module whose buffers hold this Linear's weight
_DTYPE = "_df11_dtype"  # the dtype decoded weights are given in (follows model.to(dtype))
_NAME = "_df11_name"  # the Linear's full name in the model (for error messages)
_CLASSES: dict[type, type] = {}
_COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


class DF11WeightError(RuntimeError):
    """A DF11-compressed weight was written to (or cannot be reached) outside its unit's forward."""


# placeholder operations that only read metadata (no values): run on the stride-0 tensor itself
_METADATA = {f"torch.Tensor.{n}" for n in (
    "shape.__get__", "dtype.__get__", "device.__get__", "ndim.__get__", "layout.__get__", "requires_grad.__get__",
    "requires_grad.__set__", "requires_grad_", "is_leaf.__get__", "grad.__get__", "grad_fn.__get__", "is_cuda.__get__",
    "is_cpu.__get__", "is_meta.__get__", "is_sparse.__get__", "is_quantized.__get__", "is_nested.__get__",
    "is_mkldnn.__get__", "is_xpu.__get__", "is_mps.__get__", "itemsize.__get__", "nbytes.__get__", "names.__get__",
    "size", "stride", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex", "element_size",
    "is_contiguous", "storage_offset", "get_device", "__len__", "_is_view", "is_signed",
)}


def _writes(name: str, args, kwargs) -> bool:
    if name.endswith("_") or name.startswith("torch.Tensor.__i") or name in (
            "torch.Tensor.data.__set__", "torch.Tensor.__setitem__", "torch.Tensor.__setstate__",
            "torch.Tensor.grad.__set__"):
        return True
    out = kwargs.get("out")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return any(isinstance(o, DF11Placeholder) for o in outs)


class DF11Placeholder(torch.Tensor):
    """The ``weight`` of a DF11-compressed Linear outside its unit's forward: a stride-0 tensor with the weight's
    shape, dtype and device. Metadata reads are free; a value read decodes the unit and computes on the real weight;
    a write raises :class:`DF11WeightError`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from torch.overrides import resolve_name
        from torch.utils._pytree import tree_map

        kwargs = kwargs or {}
        name = resolve_name(func) or getattr(func, "__name__", repr(func))
        if name in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if name == "torch.Tensor.data.__get__":
            return args[0]  # ``w.data`` is the placeholder too, so ``w.data += x`` / ``w.data.clone()`` stay guarded
        if name in ("torch.Tensor.__repr__", "torch.Tensor.__format__", "torch.Tensor.__str__"):
            ph = args[0]
            with torch._C.DisableTorchFunctionSubclass():
                return (f"DF11Placeholder(shape={tuple(ph.shape)}, dtype={ph.dtype}, device={ph.device}: the "
                        "DFloat11-compressed weight, decoded during its block's forward)")
        if _writes(name, args, kwargs):
            lin = next((a._df11_linear for a in (*args, *kwargs.values()) if isinstance(a, DF11Placeholder)), None)
            raise DF11WeightError(
                f"{_describe(lin)} is DFloat11-compressed: it cannot be modified ({name}). Merging a LoRA into it "
                "(PEFT merge() / merge_and_unload(), fuse_lora) and adapter inits that rewrite the base weight (PiSSA, "
                "OLoRA, CorDA, LoftQ, LoRA-GA) need plain weights: keep the LoRA as an adapter, or call "
                "radial_diffusers.dfloat11.decompress(model) first"
            )

        def real(a):
            return _decode_linear(a._df11_linear) if isinstance(a, DF11Placeholder) else a

        args, kwargs = tree_map(real, (tuple(args), kwargs))
        return func(*args, **kwargs)


def _describe(lin) -> str:
    if lin is None:
        return "this weight"
    name = lin.__dict__.get(_NAME)
    return f"{name}.weight" if name else f"the weight of a {type(lin).__name__} {tuple(weight_shape(lin) or ())}"


def _owner_and_hook(lin: nn.Module):
    ref = lin.__dict__.get(_OWNER)
    owner = ref() if ref is not None else None
    hook = unit_hook(owner) if owner is not None else None
    return owner, hook


def _decode_linear(lin: nn.Module) -> torch.Tensor:
    """``lin``'s weight decoded now, outside its unit's forward (decodes the whole unit once)."""
    owner, hook = _owner_and_hook(lin)
    if hook is None:
        raise DF11WeightError(f"{_describe(lin)} is DFloat11-compressed and its unit (the block holding the compressed "
                              "stream) is gone: it cannot be decoded")
    linears = hook.linears(owner)
    index = next(i for i, m in enumerate(linears) if m is lin)
    with torch.no_grad():
        return hook.decode(owner, linears)[index]


def _weight_get(self):
    w = self.__dict__.get(_WEIGHT)
    if w is not None:
        return w
    owner, hook = _owner_and_hook(self)
    device = hook.placeholder_device(owner) if hook is not None else torch.device("cpu")
    dtype = self.__dict__.get(_DTYPE, torch.bfloat16)
    ph = torch.zeros((), dtype=dtype, device=device).expand(weight_shape(self)).as_subclass(DF11Placeholder)
    ph._df11_linear = self
    return ph


def _weight_set(self, value):
    if isinstance(value, DF11Placeholder):  # e.g. PEFT's unload re-assigning base_layer.weight: nothing to keep
        self.__dict__.pop(_WEIGHT, None)
        return
    self.__dict__[_WEIGHT] = value


def _weight_del(self):
    self.__dict__.pop(_WEIGHT, None)


def _df11_apply(self, fn, recurse=True):
    """``nn.Module._apply`` (``.to()``, ``.float()``, ``.half()``, ...) plus: record the dtype it casts floats to, the
    dtype decoded weights are then given in."""
    out = self._df11_base_class._apply(self, fn, recurse)
    try:
        probe = fn(torch.empty(0, dtype=self.__dict__.get(_DTYPE, torch.bfloat16)))
    except Exception:  # a function that is not a plain tensor conversion: the dtype stays
        return out
    if isinstance(probe, torch.Tensor) and probe.dtype in _COMPUTE_DTYPES:
        self.__dict__[_DTYPE] = probe.dtype
    return out


def compressed_linear_class(cls: type) -> type:
    """The subclass of ``cls`` (an ``nn.Linear`` or ``nn.Embedding`` class) whose ``weight`` is the DF11 decoded view
    (cached per class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(
            f"DF11{cls.__name__}", (cls,),
            {"weight": property(_weight_get, _weight_set, _weight_del), "_df11_base_class": cls,
             "_apply": _df11_apply, "__module__": __name__},
        )
    return _CLASSES[cls]


def is_compressed_linear(module: nn.Module) -> bool:
    return "_df11_base_class" in type(module).__dict__




class DF11DecodeHook(ModelHook):
    """Decodes one DF11 unit before its module's forward; drops the decoded weights after it.

    ``offloaded``: if given, the compressed tensors live there (CPU, pinned when CUDA is available) instead of as
    buffers of the module, and each call copies them to ``device`` first (the official ``cpu_offload`` mode).
    """

    def __init__(
        self,
        attrs: tuple[str, ...],
        shapes: tuple[tuple[int, int], ...],
        threads_per_block: int,
        bytes_per_thread: int,
        offloaded: dict[str, torch.Tensor] | None = None,
        device: torch.device | None = None,
        requires_grad: tuple[bool, ...] | None = None,
    ):
        super().__init__()
        self.attrs = tuple(attrs)
        self.shapes = tuple(tuple(s) for s in shapes)
        self.numels = [int(a) * int(b) for a, b in self.shapes]
        self.n_elements = sum(self.numels)
        self.threads_per_block = int(threads_per_block)
        self.bytes_per_thread = int(bytes_per_thread)
        self.offloaded = offloaded
        self.device = device
        # requires_grad of the Parameters the compressed weights replaced (restored by decompress)
        self.requires_grad = tuple(requires_grad) if requires_grad is not None else (False,) * len(self.attrs)

    def placeholder_device(self, module: nn.Module) -> torch.device:
        if self.offloaded is not None:
            return self.device if self.device is not None else torch.device("cpu")
        return module.luts.device

    def compressed(self, module: nn.Module) -> list[torch.Tensor]:
        """The five decode inputs (luts, encoded_exponent, sign_mantissa, output_positions, gaps) on the decode device."""
        names = DF11Unit.BUFFER_NAMES[:5]
        if self.offloaded is None:
            return [getattr(module, n) for n in names]
        dev = self.placeholder_device(module)
        return [self.offloaded[n].to(dev, non_blocking=True) for n in names]

    def linears(self, module: nn.Module) -> list[nn.Module]:
        return [base_linear(module.get_submodule(a)) for a in self.attrs]

    def decode(self, module: nn.Module, linears: list[nn.Module] | None = None) -> list[torch.Tensor]:
        """The unit's weights, decoded now: fresh tensors (views of one BF16 buffer, cast to each Linear's current
        dtype when the model was moved to another one) of the Linears' shapes."""
        linears = self.linears(module) if linears is None else linears
        flat = torch.ops.radial_diffusers.df11_decode(
            *self.compressed(module), self.n_elements, self.threads_per_block, self.bytes_per_thread
        )
        return [p.view(s).to(lin.__dict__.get(_DTYPE, torch.bfloat16))
                for p, s, lin in zip(torch.split(flat, self.numels), self.shapes, linears)]

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        linears = self.linears(module)
        for lin, w in zip(linears, self.decode(module, linears)):
            lin.weight = w
        return args, kwargs

    def post_forward(self, module: nn.Module, output):
        for lin in self.linears(module):
            lin.__dict__.pop(_WEIGHT, None)
        return output


def install(module: nn.Module, hook: DF11DecodeHook, name: str | None = None) -> None:
    """Swap the unit's Linears to their compressed class and register ``hook`` on ``module`` (``name``: the unit's
    full name in the model, for error messages).

    The Linears' ``weight`` Parameters must already be removed by the caller. Also used on a deep copy of a unit,
    whose Linears already have the compressed class.
    """
    for attr in hook.attrs:
        lin = base_linear(module.get_submodule(attr))
        if not is_compressed_linear(lin):
            lin.__class__ = compressed_linear_class(type(lin))
        lin.__dict__[_OWNER] = weakref.ref(module)
        if name is not None:
            lin.__dict__[_NAME] = f"{name}.{attr}" if attr else name
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
    object.__setattr__(module, "__deepcopy__", functools.partial(_deepcopy_unit, module))


def _deepcopy_unit(module: nn.Module, memo: dict) -> nn.Module:
    """``copy.deepcopy`` of a DF11 unit: its state copied as usual, then a fresh decode hook registered on the copy
    (the copied Diffusers hook closure would still run the original module, and the Linears' owner references would
    still point at it)."""
    registry = module._diffusers_hook
    others = [name for name in registry._hook_order if name != HOOK_NAME]
    if others:
        raise DF11WeightError(
            f"copy.deepcopy of a DFloat11 block that also has Diffusers hooks {others} (group offloading, caching, "
            "layerwise casting ...) is not supported: deep-copy the model before enabling them, or decompress it"
        )
    hook = unit_hook(module)
    cls = type(module)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {k: v for k, v in module.__dict__.items() if k not in ("__deepcopy__", "forward", "_diffusers_hook")}
    new.__setstate__(copy.deepcopy(state, memo))
    install(new, DF11DecodeHook(hook.attrs, hook.shapes, hook.threads_per_block, hook.bytes_per_thread,
                                offloaded=copy.deepcopy(hook.offloaded, memo), device=hook.device,
                                requires_grad=hook.requires_grad))
    return new


def uninstall(module: nn.Module, weights: list[torch.Tensor]) -> None:
    """Undo :func:`install`: remove the hook, restore the Linears' classes and give them ``weights`` as Parameters."""
    hook = unit_hook(module)
    HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK_NAME, recurse=False)
    module.__dict__.pop("__deepcopy__", None)
    for attr, w, grad in zip(hook.attrs, weights, hook.requires_grad):
        lin = base_linear(module.get_submodule(attr))
        lin.__dict__.pop(_WEIGHT, None)
        lin.__dict__.pop(_OWNER, None)
        lin.__dict__.pop(_DTYPE, None)
        lin.__dict__.pop(_NAME, None)
        lin.__class__ = type(lin).__dict__["_df11_base_class"]
        lin.weight = nn.Parameter(w, requires_grad=grad)


def unit_hook(module: nn.Module) -> "DF11DecodeHook | None":
    """The DF11 hook on ``module``, if it is a DF11 unit."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
