"""The examples in public docstrings run and print what they claim: every module of the package that has one."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import endofm


def _modules_with_examples() -> list[str]:
    """Modules whose source holds a ``>>>`` example, found without importing them."""
    found = []
    for info in pkgutil.walk_packages(endofm.__path__, "endofm."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and ">>> " in Path(spec.origin).read_text(encoding="utf-8"):
            found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    globs = {"torch": importlib.import_module("torch"), "np": importlib.import_module("numpy")}
    globs.update(vars(module))
    examples = [example for test in doctest.DocTestFinder().find(module) for example in test.examples]
    runnable = [example for example in examples if not example.options.get(doctest.SKIP)]
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert examples and result.failed == 0 and result.attempted == len(runnable)
