"""Test-only restatement of the official DFloat11 0.5.0 loading rules (``load_and_replace_tensors`` + ``get_hook``).

It follows the official behaviour, not our loader, so a checkpoint that loads here loads with the official package:

* every ``*.safetensors`` file of the directory is read; a tensor whose name is in ``model.state_dict()`` is copied into
  that parameter/buffer;
* any other name ``a.b.c.leaf`` walks ``getattr`` from the model to module ``a.b.c``; ``split_positions`` becomes a
  Python list attribute, other leaves become buffers;
* on ``encoded_exponent`` the module path is matched with ``re.fullmatch`` against ``dfloat11_config.pattern_dict``
  (from ``config.json``), the listed Linears (in the listed order) lose their ``weight``, and a forward pre-hook is
  registered that decodes the whole unit and assigns ``tensor_split(decoded, split_positions)[i].view(out, in)``
  to the i-th Linear; a unit that is itself an ``nn.Linear`` or ``nn.Embedding`` loses its own weight and gets the
  whole decoded tensor.

The official hook runs the CUDA kernel; here the unit is decoded by our CPU codec (bit-exact against the official
encoder's output, tests/test_dfloat11_codec.py), with ``threads_per_block[0]`` and ``bytes_per_thread`` from the config.
What that kernel cannot run is refused here (``AssertionError``), as the official launch would fail or decode garbage:

* ``bytes_per_thread`` other than 8 (``decode.cu`` hardcodes ``BYTES_PER_THREAD 8``; the config value only sizes the
  grid);
* ``threads_per_block`` not a power of two (the block-wide prefix sum in ``decode.cu`` steps by powers of two) or
  above CUDA's 1024 threads per block;
* a unit whose dynamic shared memory, ``threads_per_block * 4 + 4 + 2 * max(diff(output_positions))`` bytes as the
  official loader computes it, exceeds 48 KiB (the launch requests no larger opt-in).
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import load_file
from torch import nn

from radial_diffusers.dfloat11.codec import DF11Unit, decode


OFFICIAL_BYTES_PER_THREAD = 8
MAX_DYNAMIC_SHARED_MEMORY = 48 * 1024  # without cudaFuncSetAttribute opt-in, which the official launch never makes


def shared_mem_size(output_positions: torch.Tensor, tpb: int) -> int:
    """The dynamic shared memory the official loader requests for a unit's kernel launch, in bytes."""
    pos = output_positions.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return tpb * 4 + 4 + int((pos[1:] - pos[:-1]).max()) * 2


def official_load(model: nn.Module, directory: str) -> nn.Module:
    with open(os.path.join(directory, "config.json")) as fh:
        cfg = json.load(fh)["dfloat11_config"]
    tpb, bpt, pattern_dict = cfg["threads_per_block"][0], cfg["bytes_per_thread"], cfg["pattern_dict"]
    assert bpt == OFFICIAL_BYTES_PER_THREAD, f"the official kernel decodes 8 bytes per thread, config says {bpt}"
    assert 0 < tpb <= 1024 and tpb & (tpb - 1) == 0, f"threads_per_block {tpb}: the kernel needs a power of two <= 1024"

    def hook(module, _args):
        unit = DF11Unit(luts=module.luts, encoded_exponent=module.encoded_exponent,
                        sign_mantissa=module.sign_mantissa, output_positions=module.output_positions,
                        gaps=module.gaps, split_positions=torch.zeros(0, dtype=torch.int64),
                        threads_per_block=tpb, bytes_per_thread=bpt)
        flat = decode(unit)[0].reshape(-1)
        if isinstance(module, nn.Linear):  # the unit is the Linear itself
            module.weight = flat.view(module.out_features, module.in_features)
            return
        if isinstance(module, nn.Embedding):  # or an Embedding (LLM releases: embed_tokens)
            module.weight = flat.view(module.num_embeddings, module.embedding_dim)
            return
        for sub, w in zip(module.weight_injection_modules, torch.tensor_split(flat, module.split_positions)):
            sub.weight = w.view(sub.out_features, sub.in_features)

    for file_name in [f for f in os.listdir(directory) if f.endswith(".safetensors")]:
        for name, value in load_file(os.path.join(directory, file_name)).items():
            state = model.state_dict()
            if name in state:
                assert state[name].shape == value.shape, name
                with torch.no_grad():
                    dict(model.named_parameters(), **dict(model.named_buffers()))[name].copy_(value)
                continue
            parts = name.split(".")
            module = model
            for part in parts[:-1]:
                module = getattr(module, part)
            if parts[-1] == "split_positions":
                module.split_positions = value.tolist()
            else:
                module.register_buffer(parts[-1], value)
            if parts[-1] == "output_positions":
                need = shared_mem_size(value, tpb)
                assert need <= MAX_DYNAMIC_SHARED_MEMORY, (
                    f"{name}: the kernel launch needs {need} bytes of dynamic shared memory, over the 48 KiB limit")
            if parts[-1] == "encoded_exponent":
                module.register_forward_pre_hook(hook)
                for pattern, attr_names in pattern_dict.items():
                    if re.fullmatch(pattern, ".".join(parts[:-1])):
                        if isinstance(module, (nn.Linear, nn.Embedding)):
                            del module.weight
                            continue
                        module.weight_injection_modules = []
                        for path in attr_names:
                            target = module
                            for p in path.split("."):
                                target = getattr(target, p)
                            del target.weight
                            module.weight_injection_modules.append(target)
    return model
