"""Every registered loss carries a runnable example in its docstrings, and the examples pass."""

from __future__ import annotations

import doctest
import importlib

import pytest

from raycl.losses import LOSSES


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_module_has_passing_examples(name: str) -> None:
    module = importlib.import_module(LOSSES[name].__module__)
    results = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0, f"{module.__name__} has no >>> example in its docstrings"
    assert results.failed == 0, f"{module.__name__}: {results.failed} example(s) failed"
