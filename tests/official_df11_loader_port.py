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
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import load_file
from torch import nn

from radial_diffusers.dfloat11.codec import DF11Unit, decode


def official_load(model: nn.Module, directory: str) -> nn.Module:
    with open(os.path.join(directory, "config.json")) as fh:
        cfg = json.load(fh)["dfloat11_config"]
    tpb, bpt, pattern_dict = cfg["threads_per_block"][0], cfg["bytes_per_thread"], cfg["pattern_dict"]

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
