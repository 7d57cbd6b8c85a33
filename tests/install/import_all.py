"""Import every module of the ``endofm`` package and print how many; exits non-zero naming the first failure.

A plain script (no pytest) so that it also runs in an environment without the dev extras: ``.ci/run`` runs it
in ``make demo``'s environment, and ``test_packaging.py`` runs it with every dev-only distribution hidden.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys


def import_all() -> list[str]:
    """Import ``endofm`` and each of its sub-modules; return their names."""
    import endofm

    modules = pkgutil.walk_packages(endofm.__path__, "endofm.")
    names = ["endofm"] + [info.name for info in modules if info.name != "endofm.__main__"]  # runs the command
    for name in names:
        importlib.import_module(name)
    return names


if __name__ == "__main__":
    try:
        imported = import_all()
    except ImportError as error:
        sys.exit(f"import failed: {error}")
    print(f"imported {len(imported)} endofm modules")
