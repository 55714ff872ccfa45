"""On-the-fly DF11 decoding: a Diffusers ``ModelHook`` per unit and Linears whose weight is decoded per call.

``DF11DecodeHook.pre_forward`` decodes the whole unit with one ``radial_diffusers::df11_decode`` launch into a fresh
BF16 tensor and hands each listed Linear a view of it; ``post_forward`` drops the views. The buffer is per call, not
one buffer reused by every block: autograd keeps each block's decoded weights alive until that block's backward (so
LoRA training on a DF11 base is exact), and with gradient checkpointing the recomputed forward decodes again. In
inference the caching allocator hands the freed block of memory to the next unit, so only about one decoded unit is
alive at a time.

A compressed Linear keeps its class behaviour (``isinstance(m, nn.Linear)``, PEFT wrapping) but its ``weight`` is a
property: the decoded view during the unit's forward, otherwise a stride-0 BF16 placeholder of the right shape on the
device of the unit's compressed buffers (so PEFT places LoRA adapters on the right device, and ``model.to()`` never
materialises it).
"""

from __future__ import annotations

import weakref

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from . import kernel  # noqa: F401  (registers torch.ops.radial_diffusers.df11_decode)
from .codec import DF11Unit
from .patterns import base_linear, weight_shape

__all__ = ["HOOK_NAME", "DF11DecodeHook", "compressed_linear_class", "is_compressed_linear", "unit_hook"]

HOOK_NAME = "dfloat11_decode"
_WEIGHT = "_df11_weight"  # instance __dict__ slot of the decoded view
_OWNER = "_df11_owner"  # weakref to the unit module whose buffers hold this Linear's weight
_CLASSES: dict[type, type] = {}


def _weight_get(self):
    w = self.__dict__.get(_WEIGHT)
    if w is not None:
        return w
    owner = self.__dict__[_OWNER]()
    hook = unit_hook(owner) if owner is not None else None
    device = hook.placeholder_device(owner) if hook is not None else torch.device("cpu")
    return torch.zeros((), dtype=torch.bfloat16, device=device).expand(weight_shape(self))


def _weight_set(self, value):
    self.__dict__[_WEIGHT] = value


def _weight_del(self):
    self.__dict__.pop(_WEIGHT, None)


def compressed_linear_class(cls: type) -> type:
    """The subclass of ``cls`` (an ``nn.Linear`` or ``nn.Embedding`` class) whose ``weight`` is the DF11 decoded view
    (cached per class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(
            f"DF11{cls.__name__}", (cls,),
            {"weight": property(_weight_get, _weight_set, _weight_del), "_df11_base_class": cls,
             "__module__": __name__},
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

    def decode(self, module: nn.Module) -> list[torch.Tensor]:
        """The unit's weights, decoded now: fresh BF16 tensors (views of one buffer) of the Linears' shapes."""
        flat = torch.ops.radial_diffusers.df11_decode(
            *self.compressed(module), self.n_elements, self.threads_per_block, self.bytes_per_thread
        )
        return [p.view(s) for p, s in zip(torch.split(flat, self.numels), self.shapes)]

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        for lin, w in zip(self.linears(module), self.decode(module)):
            lin.weight = w
        return args, kwargs

    def post_forward(self, module: nn.Module, output):
        for lin in self.linears(module):
            lin.__dict__.pop(_WEIGHT, None)
        return output


def install(module: nn.Module, hook: DF11DecodeHook) -> None:
    """Swap the unit's Linears to their compressed class and register ``hook`` on ``module``.

    The Linears' ``weight`` Parameters must already be removed by the caller.
    """
    for attr in hook.attrs:
        lin = base_linear(module.get_submodule(attr))
        lin.__class__ = compressed_linear_class(type(lin))
        lin.__dict__[_OWNER] = weakref.ref(module)
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)


def uninstall(module: nn.Module, weights: list[torch.Tensor]) -> None:
    """Undo :func:`install`: remove the hook, restore the Linears' classes and give them ``weights`` as Parameters."""
    hook = unit_hook(module)
    HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK_NAME, recurse=False)
    for attr, w, grad in zip(hook.attrs, weights, hook.requires_grad):
        lin = base_linear(module.get_submodule(attr))
        lin.__dict__.pop(_WEIGHT, None)
        lin.__dict__.pop(_OWNER, None)
        lin.__class__ = type(lin).__dict__["_df11_base_class"]
        lin.weight = nn.Parameter(w, requires_grad=grad)


def unit_hook(module: nn.Module) -> "DF11DecodeHook | None":
    """The DF11 hook on ``module``, if it is a DF11 unit."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
