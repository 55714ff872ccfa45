"""Test session setup: without CUDA, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before a kernel module is imported (``triton.jit`` reads it at decoration time).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
