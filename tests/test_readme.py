"""Every command in the README runs, in README order, at tiny scale.

The commands are read from the README's ``bash`` blocks and run with their own arguments plus the tiny-scale
additions of :data:`TINY` (fewer steps, smaller frames, the CPU), in a folder holding small stand-ins for the
files they name (``endo_fm.pth`` and ``kinetics400_vitb_ssl.pth`` are the mini backbone in the original's flat
layout; the datasets are synthetic, in the original layouts). A README command this test does not know fails
it, so the README cannot drift away from what runs. The Python block runs too, on the mini model.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from endofm.cli.main import main
from endofm.data.synthetic import render_video, write_cvc, write_kumc, write_polypdiag, write_pretrain
from endofm.data.video import write_video
from endofm.models.checkpoint import export_original
from endofm.models.heads import DINOHead
from endofm.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

RUN = ["run.num_workers=0", "run.progress=false", "run.device=cpu"]
PRETRAIN = [*RUN, "run.max_steps=2", "run.batch_size=2"]
SMALL_VIEWS = ["model.arch=endofm_vit_mini", "model.head_out_dim=64", "model.head_hidden_dim=32",
               "model.head_bottleneck_dim=16", "data.views.global_frames=[2,2]", "data.views.local_frames=[2,2]",
               "data.views.global_size=32", "data.views.local_size=16", "data.views.decode_short_side=48",
               "run.precision=fp32"]
FINETUNE = [*RUN, "run.epochs=1", "run.batch_size=2"]
SMALL_CLIP = ["--frames", "2", "--size", "32"]

# README command (continuation lines joined, comment dropped) -> arguments added for the tiny run.
TINY: dict[str, list[str]] = {
    "endofm info endo_fm.pth": [],
    "endofm convert endo_fm.pth models/endo_fm": [],
    "endofm embed my_videos/ --checkpoint models/endo_fm --out feats.npz --window 32 --stride 16 --device cuda:0":
        [*SMALL_CLIP, "--quiet"],
    "endofm data scan my_videos/ --out manifest.csv": [],
    "endofm pretrain --config cpu_tiny data.manifest=manifest.csv run.out_dir=runs/tiny":
        PRETRAIN,
    "endofm pretrain --config endofm_vit_base data.manifest=manifest.csv "
    "model.init=endo_fm.pth run.batch_size=24": [*SMALL_VIEWS, *PRETRAIN, "run.out_dir=runs/base"],
    "torchrun --nproc_per_node 8 -m endofm pretrain --config endofm_vit_base "
    "data.manifest=manifest.csv": [*SMALL_VIEWS, *PRETRAIN, "run.out_dir=runs/ddp"],
    "endofm pretrain --config cpu_tiny run.out_dir=runs/tiny --resume": ["run.max_steps=3"],
    "endofm evaluate knn --data polypdiag/ --checkpoint runs/tiny/teacher": [*SMALL_CLIP, "--quiet"],
    "endofm evaluate knn --data polypdiag/ --model endofm_vit_mini": [*SMALL_CLIP, "--quiet"],
    "endofm finetune classify --data PolypDiag/ --init endo_fm.pth --out runs/polypdiag":
        [*FINETUNE, "data.num_frames=2", "data.size=32"],
    "endofm finetune segment --data CVC-ClinicDB/ --init endo_fm.pth --out runs/cvc":
        [*FINETUNE, "data.clip_length=2", "transunet.resnet_width=32", "transunet.resnet_units=[1,1,1]",
         "transunet.decoder_channels=[8,8,8,8]"],
    "endofm finetune detect --data KUMC/ --init endo_fm.pth --config detect --out runs/kumc":
        [*RUN, "iterations.max_iter=2", "stft.size=64", "stft.out_channels=32", "stft.num_convs=1"],
    "endofm evaluate classify --checkpoint runs/polypdiag/model --data PolypDiag/ --split val --out metrics.json": [],
    "endofm predict case.mp4 --checkpoint runs/polypdiag/model --out predictions/": ["--device", "cpu", "--quiet"],
    "endofm visualize attention case.mp4 --checkpoint models/endo_fm --out attention/": SMALL_CLIP,
}
# What each command must leave behind (beyond exiting with 0).
OUTPUTS = {
    "endofm convert": "models/endo_fm/config.json", "endofm embed": "feats.npz", "endofm data scan": "manifest.csv",
    "endofm pretrain --config cpu_tiny data": "runs/tiny/teacher/config.json",
    "endofm pretrain --config endofm_vit_base": "runs/base/teacher/config.json",
    "torchrun": "runs/ddp/teacher/config.json", "endofm finetune classify": "runs/polypdiag/metrics.json",
    "endofm finetune segment": "runs/cvc/metrics.json", "endofm finetune detect": "runs/kumc/metrics.json",
    "endofm evaluate classify": "metrics.json", "endofm predict": "predictions/annotated.mp4",
    "endofm visualize": "attention/attention_grid.png",
}
# The two set-up commands run elsewhere: `make test` is this suite, `make demo` is `endofm demo`, whose job
# tests/test_demo.py runs at tiny scale.
MAKE = {"make demo": "$(VENV)/bin/endofm demo", "make test": "$(PY) -m pytest -q"}


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with small stand-ins for every file the README names."""
    backbone = build_model("endofm_vit_mini")
    export_original(tmp_path / "endo_fm.pth", backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    export_original(tmp_path / "kinetics400_vitb_ssl.pth", backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    write_pretrain(tmp_path / "my_videos", 2, num_frames=12, size=64)
    for name in ("polypdiag", "PolypDiag"):
        write_polypdiag(tmp_path / name, 6, num_frames=8, size=64)
    write_cvc(tmp_path / "CVC-ClinicDB", 4, length_range=(3, 4), size=64)
    write_kumc(tmp_path / "KUMC", 3, num_frames=4, size=64)
    write_video(tmp_path / "case.mp4", render_video(0, 8, 64, polyp=True).frames)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_lists_only_commands_this_test_runs():
    commands = readme_commands()
    assert set(commands) == set(TINY) | set(MAKE), "README commands and TINY differ"
    assert commands[:2] == ["make demo", "make test"], "the README starts with the two set-up commands"
    makefile = (REPO / "Makefile").read_text()
    for target, recipe in MAKE.items():
        body = re.search(rf"^{target.split()[1]}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
        assert body and recipe in body.group(1), target


@pytest.mark.slow
def test_every_readme_command_runs_at_tiny_scale(workspace):
    for command in readme_commands():
        if command in MAKE:
            continue
        args = shlex.split(command)
        at = args.index("--resume") if "--resume" in args else len(args)  # overrides go before the flag
        args[at:at] = TINY[command]
        if not torch.cuda.is_available():
            args = ["cpu" if arg == "cuda:0" else arg for arg in args]
        if args[0] == "torchrun":
            nproc = args.index("--nproc_per_node") + 1
            args[nproc] = "2"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--master_port", str(_free_port())]
            result = subprocess.run(launcher + args[1:], capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        else:
            assert args[0] == "endofm", command
            assert main(args[1:]) == 0, command
        expected = next((path for prefix, path in OUTPUTS.items() if command.startswith(prefix)), None)
        assert expected is None or (workspace / expected).is_file(), f"{command} did not write {expected}"


def test_the_readme_python_example_runs(workspace):
    backbone = build_model("endofm_vit_mini")
    export_original(workspace / "endo_fm.pth", backbone)
    write_video(workspace / "case.mp4", render_video(1, 40, 64).frames)
    (block,) = [b for b in readme_blocks("python") if "import endofm" in b]
    code = block.replace('"endofm_vit_base"', '"endofm_vit_mini"').replace("(2, 3, 8, 224, 224)", "(2, 3, 2, 64, 64)")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["emb"].features.shape[1] == backbone.embed_dim
    assert namespace["cls"].shape == (2, namespace["model"].embed_dim)
    assert (workspace / "my-model" / "config.json").is_file()
