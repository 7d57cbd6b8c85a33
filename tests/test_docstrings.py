"""The examples in public docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["endofm.models.backbone", "endofm.models.heads", "endofm.models.registry", "endofm.tasks.embed",
           "endofm.metrics.knn", "endofm.config",
           "endofm.engine.schedules", "endofm.pretrain.loss", "endofm.pretrain.ema"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"torch": importlib.import_module("torch"), "np": importlib.import_module("numpy")}
    globs.update(vars(module))
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
