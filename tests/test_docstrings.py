"""The examples in the docstrings of the library and the training package run as written (``doctest``; examples that
need the Hub, a GPU or data carry ``# doctest: +SKIP``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lora_training
import radial_diffusers

MODULES = sorted(name for package in (radial_diffusers, lora_training)
                 for name in (package.__name__, *(m.name for m in pkgutil.walk_packages(package.__path__,
                                                                                         package.__name__ + "."))))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    result = doctest.testmod(module, report=True, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (above)"
