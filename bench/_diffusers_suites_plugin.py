"""pytest plugin for ``bench/diffusers_suites.py``: every video transformer (``RD_SUITES_LEVEL=models``, the default)
or every video pipeline (``RD_SUITES_LEVEL=pipelines``) Diffusers' tests build gets radial attention.

Loaded with ``-p _diffusers_suites_plugin`` (its folder on ``PYTHONPATH``). It wraps the ``__init__`` of each class
of the families radial-diffusers supports, so that the object, once built (directly, through ``from_pretrained``,
``from_pipe`` or by a test's reload), has :func:`radial_diffusers.apply_radial_attention` applied, sparse from its
first call: ``RadialConfig(block_size=RD_SUITES_BLOCK, dense_steps=0, dense_layers=0)``. A pipeline gets it as a
user applies it, so its steps follow the pipeline's scheduler. ``RD_SUITES_OFF=1`` leaves the stock processors (the
baseline run); ``RD_SUITES_COUNT=FILE`` appends one line per object it installed radial attention on, with the
mask density and sparse attention calls of each test (one file for all xdist workers).
"""

from __future__ import annotations

import functools
import inspect
import os
import re

import diffusers
import pytest

import radial_diffusers as rd
from radial_diffusers.families import _REGISTRY

# The transformer classes of the families radial-diffusers supports (those missing from the installed Diffusers are
# skipped): the registry's, so a new family's are wrapped without an edit here.
CLASSES = tuple(sorted({c for family in _REGISTRY.values() for c in family.transformer_classes}))


def _video_pipelines() -> tuple[str, ...]:
    """The pipeline classes Diffusers exports whose ``transformer`` is of a registered family's class (by the
    annotation of their ``__init__``): the registry's pipelines and the others built on the same transformers
    (video-to-video, control, ...)."""
    names = []
    for name in dir(diffusers):
        cls = getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            continue
        transformer = inspect.signature(cls.__init__).parameters.get("transformer")
        annotation = getattr(transformer, "annotation", "")
        annotation = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        if any(re.search(rf"\b{c}\b", annotation) for c in CLASSES):
            names.append(name)
    return tuple(names)

_STATES: list = []  # (class name, RadialState) installed during the current test


def _config() -> rd.RadialConfig:
    return rd.RadialConfig(block_size=int(os.environ.get("RD_SUITES_BLOCK", "16")), dense_steps=0, dense_layers=0)


_WRAPPED: set = set()


def _install(cls, pipeline: bool) -> None:
    init = cls.__init__
    _WRAPPED.add(cls)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # a wrapped subclass's own wrapper applies it; a test's own subclass (Cosmos' pipeline wrappers) gets it here
        if type(self) is not cls and any(c in _WRAPPED for c in type(self).__mro__[:type(self).__mro__.index(cls)]):
            return
        if pipeline and getattr(self, "transformer", None) is None:
            return  # a pipeline built without its transformer (a test of its text encoding alone)
        state = rd.apply_radial_attention(self, _config())
        _STATES.extend((cls.__name__, s) for s in state.experts or (state,))

    cls.__init__ = __init__


def pytest_runtest_setup(item):
    _STATES.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    count = os.environ.get("RD_SUITES_COUNT")
    if count and _STATES:
        with open(count, "a") as f:
            for name, state in _STATES:
                try:
                    density = f"{state.stats().density:.3f}"
                except RuntimeError:  # never called
                    density = "-"
                f.write(f"{name} {item.nodeid} density={density} sparse_calls={sum(state.sparse_calls.values())}\n")
    _STATES.clear()


if os.environ.get("RD_SUITES_OFF") != "1":
    _pipelines = os.environ.get("RD_SUITES_LEVEL", "models") == "pipelines"
    for _name in _video_pipelines() if _pipelines else CLASSES:
        _cls = getattr(diffusers, _name, None)
        if _cls is not None:
            _install(_cls, _pipelines)
