"""Test session setup: without CUDA, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before a kernel module is imported (``triton.jit`` reads it at decoration time).

DF11 decoding is the exception outside ``test_dfloat11_kernel.py``: model-level tests decode with the CPU codec, the
path a CPU user runs (bit-identical to the kernel, which ``test_dfloat11_kernel.py`` checks under the interpreter),
because the interpreted kernel costs about 0.3 s per program, per block, per forward. A test marked ``df11_kernel``
decodes its model with the interpreted kernel.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`pytest -n N`) the workers share the cores: one worker's torch threads per core, not all of them
# each (oversubscribed CPU threads slow torch several-fold).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(params=[True, False], ids=["cpu-flash", "explicit-softmax"])
def cpu_path(request, monkeypatch):
    """Run a test through both CPU implementations of the PyTorch attention path."""
    from radial_diffusers.attention import torch_ref

    monkeypatch.setattr(torch_ref, "USE_CPU_FLASH", request.param)
    return request.param


def use_small_rectangles(monkeypatch) -> None:
    """Scale the PyTorch path's rectangle targets to small test layouts: at block 16 the defaults ask for 32 key
    blocks per rectangle, so small layouts get one query block per rectangle and no merges."""
    from radial_diffusers.attention import block_cover

    monkeypatch.setattr(block_cover, "_TARGET_ROWS", 64)
    monkeypatch.setattr(block_cover, "_TARGET_KEYS", 32)


@pytest.fixture(params=["default", "small-rectangles"])
def cover_targets(request, monkeypatch):
    """Run a test with the PyTorch path's default rectangle targets and with :func:`use_small_rectangles`."""
    if request.param == "small-rectangles":
        use_small_rectangles(monkeypatch)
    return request.param


@pytest.fixture
def small_rectangles(monkeypatch):
    """:func:`use_small_rectangles` for one test."""
    use_small_rectangles(monkeypatch)


@pytest.fixture(autouse=True)
def _df11_decode_path(request, monkeypatch):
    if torch.cuda.is_available() or request.node.get_closest_marker("df11_kernel") \
            or request.module.__name__.endswith("test_dfloat11_kernel"):
        return
    monkeypatch.setattr("radial_diffusers.dfloat11.kernel._interpreter_active", lambda: False)


# -- one tiny pipeline per registered tiny model, shared by every test file ---------------------------------------

from radial_diffusers.families import random_tiny_models  # noqa: E402

# every registered family's random tiny pipelines (not the trained toy model): tests parametrize over the registry
TINY_NAMES = tuple(random_tiny_models())
_PIPES: dict = {}


def tiny_pipeline(name: str):
    """The tiny pipeline ``name`` (seed 0, float32), built once per test session. Tests that change a pipeline
    (processors, adapters, weights) must restore it, or build their own with ``load_tiny``."""
    if name not in _PIPES:
        from radial_diffusers.tiny import load_tiny

        _PIPES[name] = load_tiny(name, seed=0)
    return _PIPES[name]


class _LazyPipes(dict):
    def __missing__(self, name: str):
        return tiny_pipeline(name)


@pytest.fixture(scope="session")
def tiny_pipes() -> dict:
    """``tiny_pipes[name]``: the shared tiny pipeline ``name``, built on first use (see :func:`tiny_pipeline`)."""
    return _LazyPipes()


@pytest.fixture(params=TINY_NAMES)
def tiny_name(request) -> str:
    """Each registered tiny model's name in turn."""
    return request.param


@pytest.fixture
def tiny_pipe(tiny_name):
    """The shared tiny pipeline of ``tiny_name`` (see :func:`tiny_pipeline`)."""
    return tiny_pipeline(tiny_name)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder of captioned random clips for the LoRA training tests (built once per test module)."""
    from train_helpers import write_clips

    return write_clips(tmp_path_factory.mktemp("clips"))
