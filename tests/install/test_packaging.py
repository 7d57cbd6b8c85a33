"""The package as users install it: runtime dependencies complete, recipes and metadata inside the wheel.

``test_every_module_imports_with_the_runtime_dependencies_alone`` runs in every suite (seconds): it hides
every installed distribution that the runtime requirements do not pull in (pytest, ruff, scikit-learn, ...)
and imports each ``endofm`` module. The wheel test builds a wheel, installs it into a new virtual environment,
checks that its runtime requirements hold no dev tool, and runs the shipped recipes from a folder outside the
repository (the runtime dependencies seen from this environment); it runs when ``ENDOFM_INSTALL_TESTS=1``
(``.ci/run`` sets it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import endofm

REPO = Path(__file__).resolve().parents[2]
IMPORT_ALL = Path(__file__).with_name("import_all.py")

HIDE = """
import sys
from importlib.machinery import PathFinder
HIDDEN = set({hidden!r})

class RuntimeOnly(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else PathFinder.find_spec(name, path, target)

sys.meta_path = [RuntimeOnly if finder is PathFinder else finder for finder in sys.meta_path]
sys.argv = [{script!r}]
exec(compile(open({script!r}).read(), {script!r}, "exec"), {{"__name__": "__main__"}})
"""
"""Runs a script with the path finder blind to the hidden top-level modules, as if they were not installed."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(dist: str = "endofm") -> set[str]:
    """Canonical names of ``dist`` and every distribution its requirements pull in, extras left out."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def dev_only_modules() -> set[str]:
    """Top-level modules of installed distributions outside the runtime closure (the dev tools)."""
    runtime = runtime_closure()
    return {module for module, dists in metadata.packages_distributions().items()
            if not module.startswith("_") and module != "endofm"
            and not any(_canonical(d) in runtime for d in dists)}


def test_the_dev_tools_are_hidden_and_the_runtime_ones_are_not():
    hidden = dev_only_modules()
    assert {"pytest", "sklearn", "faster_coco_eval"} <= hidden, "the dev extra's packages must be hidden"
    assert not {"torch", "numpy", "scipy", "PIL", "av", "yaml", "matplotlib"} & hidden


def test_every_module_imports_with_the_runtime_dependencies_alone():
    code = HIDE.format(hidden=sorted(dev_only_modules()), script=str(IMPORT_ALL))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"imported \d+ endofm modules", done.stdout)


def test_one_version_and_the_files_a_wheel_needs():
    assert metadata.version("endofm") == endofm.__version__
    package = Path(endofm.__file__).parent
    assert (package / "py.typed").is_file()
    assert sorted(p.stem for p in (package / "configs" / "pretrain").glob("*.yaml"))
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert not re.search(r'(?m)^version\s*=\s*"', (REPO / "pyproject.toml").read_text()), "one version: __init__.py's"


@pytest.mark.skipif(os.environ.get("ENDOFM_INSTALL_TESTS") != "1",
                    reason="builds and installs a wheel into a new virtual environment; set "
                           "ENDOFM_INSTALL_TESTS=1 (.ci/run does)")
def test_a_wheel_installs_without_the_dev_extras_and_runs_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "2"
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   check=True, env=env, cwd=tmp_path, timeout=600)
    wheel = next(dist.glob("endofm-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True,
                   timeout=300)
    python, command = venv / "bin" / "python", venv / "bin" / "endofm"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=env,
                   timeout=300)
    # The runtime dependencies are the ones this suite runs on (.ci/run's make demo installs them into a new
    # environment from pyproject.toml and imports every module): seen through a path file, behind the wheel.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(python), "-c", purelib], capture_output=True, text=True, check=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", purelib], capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "runtime_dependencies.pth").write_text(ours + "\n")
    requires = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(*m.requires('endofm'), "
                               "sep='\\n')"], capture_output=True, text=True, check=True, env=env).stdout.splitlines()
    runtime = {Requirement(line).name.lower() for line in requires if "extra ==" not in line}
    assert {"torch", "av", "safetensors"} <= runtime, requires
    assert not runtime & {"pytest", "ruff", "scikit-learn", "faster-coco-eval", "onnxruntime"}, "dev extras"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = ("import endofm, importlib.metadata as m, pathlib; "
             "p = pathlib.Path(endofm.__file__).parent; "
             "assert m.version('endofm') == endofm.__version__; assert (p / 'py.typed').is_file(); "
             f"assert str(p).startswith({str(venv)!r}), p; "
             "print(len(m.files('endofm')))")
    subprocess.run([str(python), "-c", check], check=True, env=env, cwd=elsewhere, timeout=120)
    subprocess.run([str(python), str(IMPORT_ALL)], check=True, env=env, cwd=elsewhere, timeout=300)
    steps = [  # the shipped recipes end to end at toy scale (.ci/run runs the whole demo from the clone)
        ["data", "synth", "data", "--videos", "12", "--pretrain-clips", "8", "--pretrain-frames", "16",
         "--pretrain-size", "64"],
        ["pretrain", "--config", "cpu_micro", "data.manifest=data/pretrain", "run.out_dir=pre", "run.max_steps=2",
         "run.batch_size=4", "--quiet"],
        ["finetune", "classify", "--config", "classify_cpu", "--data", "data/polypdiag", "--init", "pre/teacher",
         "--out", "cls", "run.epochs=1", "--quiet"],
    ]
    for step in steps:
        done = subprocess.run([str(command), *step], capture_output=True, text=True, env=env, cwd=elsewhere,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (elsewhere / "pre" / "config.yaml").is_file(), "the shipped cpu_micro recipe was found and saved"
    assert (elsewhere / "cls" / "metrics.json").is_file() and (elsewhere / "cls" / "model").is_dir()
