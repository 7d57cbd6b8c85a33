"""Every command of the README and of ``docs/*.md`` runs, page by page, at tiny scale; so do their Python blocks.

The commands are read from the pages' ``bash`` blocks and run with their own arguments plus the tiny-scale
additions of :data:`TINY` (fewer steps, smaller frames and models, the CPU), in a folder holding small stand-ins
for the files they name: ``endo_fm.pth`` and ``kinetics400_vitb_ssl.pth`` are the mini backbone in the
original's flat layout; ``polypdiag.pth``, ``cvc.pth`` and ``kumc.pth`` are tiny models in the layouts of the
original's released fine-tuned models; the datasets are synthetic, in the original layouts. A command that
appears on several pages runs once. A page command this test does not know fails it, so the pages cannot
drift away from what runs. The set-up commands (``make``, ``pip``) are checked against the Makefile and
``pyproject.toml`` instead (``make test`` is this suite, ``make demo`` runs ``endofm demo``, which
``tests/test_demo.py`` runs at tiny scale, and ``tests/install`` builds and installs the wheel).
Each page's ``python`` blocks run after its commands, on the mini model.
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
from endofm.data.encoding import write_video
from endofm.data.synthetic import render_video, write_cvc, write_kumc, write_polypdiag, write_pretrain
from endofm.models.backbone import BackboneConfig
from endofm.models.checkpoint import export_original
from endofm.models.detection.stft import STFTConfig, STFTDetector
from endofm.models.heads import DINOHead, LinearClassifier
from endofm.models.registry import build_model
from endofm.models.segmentation import TransUNet, TransUNetConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README] + [DOCS / f"{name}.md" for name in
                    ("checkpoints", "data", "pretraining", "finetuning", "prediction", "performance", "deployment",
                     "differences", "architecture")]
"""The pages in the order they run: a page may use what an earlier page's commands wrote."""

RUN = ["run.num_workers=0", "run.progress=false", "run.device=cpu"]
PRETRAIN = [*RUN, "run.max_steps=2", "run.batch_size=2"]
SMALL_VIEWS = ["model.arch=endofm_vit_mini", "model.head_out_dim=64", "model.head_hidden_dim=32",
               "model.head_bottleneck_dim=16", "data.views.global_frames=[2,2]", "data.views.local_frames=[2,2]",
               "data.views.global_size=32", "data.views.local_size=16", "data.views.decode_short_side=48",
               "run.precision=fp32"]
FINETUNE = [*RUN, "run.epochs=1", "run.batch_size=2"]
CLASSIFY = [*FINETUNE, "data.num_frames=2", "data.size=32"]
SEGMENT = [*FINETUNE, "data.clip_length=2", "transunet.resnet_width=32", "transunet.resnet_units=[1,1,1]",
           "transunet.decoder_channels=[8,8,8,8]"]
DETECT = [*RUN, "iterations.max_iter=2", "stft.size=64", "stft.out_channels=32", "stft.num_convs=1"]
SMALL_CLIP = ["--frames", "2", "--size", "32"]
QUIET = [*SMALL_CLIP, "--quiet"]
SMALL_DATA = ["--data", "tiny_datasets/"]  # the last --data wins: the workspace's small datasets, not synth's
REPRODUCE = [*SMALL_DATA, "--quick", *[arg for task_key in (
    "classify:data.size=32", "classify:data.num_frames=2", "classify:run.batch_size=2",
    "segment:transunet.resnet_width=32",
    "segment:transunet.resnet_units=[1,1,1]", "segment:transunet.decoder_channels=[8,8,8,8]",
    "detect:iterations.max_iter=2", "detect:stft.size=64", "detect:stft.out_channels=32",
    "detect:stft.num_convs=1") for arg in ("--set", task_key)]]

# Page command (continuation lines joined, comment dropped) -> arguments added for the tiny run.
TINY: dict[str, list[str]] = {
    # README
    "endofm info endo_fm.pth": [],
    "endofm convert endo_fm.pth models/endo_fm": [],
    "endofm embed my_videos/ --checkpoint models/endo_fm --out feats.npz --window 32 --stride 16 --device cuda:0":
        QUIET,
    "endofm finetune classify --data PolypDiag/ --init endo_fm.pth --out runs/polypdiag": CLASSIFY,
    "endofm evaluate classify --checkpoint runs/polypdiag/model --data PolypDiag/ --split val --out metrics.json": [],
    "endofm predict case.mp4 --checkpoint runs/polypdiag/model --out predictions/": ["--device", "cpu", "--quiet"],
    "endofm data scan my_videos/ --out manifest.csv": [],
    "endofm pretrain --config cpu_tiny data.manifest=manifest.csv run.out_dir=runs/tiny": PRETRAIN,
    "endofm evaluate knn --data polypdiag/ --checkpoint runs/tiny/teacher": QUIET,
    # docs/checkpoints.md
    "endofm info polypdiag.pth": [],
    "endofm convert cvc.pth models/cvc": [],
    "endofm convert kumc.pth models/kumc": [],
    # docs/data.md
    "endofm data synth datasets/ --videos 20 --seed 0":
        ["--videos", "4", "--pretrain-clips", "4", "--pretrain-frames", "8", "--pretrain-size", "32"],
    "endofm data scan my_videos/ --out videos.csv --clip-seconds 0": [],
    "endofm data transcode my_videos/ my_videos_256/": ["--short-side", "48", "--no-progress"],
    # docs/pretraining.md
    "endofm pretrain --config cpu_tiny run.out_dir=runs/tiny --resume": ["run.max_steps=3"],
    "torchrun --nproc_per_node 8 -m endofm pretrain --config endofm_vit_base data.manifest=manifest.csv":
        [*SMALL_VIEWS, *PRETRAIN, "run.out_dir=runs/ddp"],
    "endofm pretrain --config endofm_vit_base data.manifest=manifest.csv model.init=endo_fm.pth run.batch_size=24":
        [*SMALL_VIEWS, *PRETRAIN, "run.out_dir=runs/base"],
    "endofm pretrain --config cpu_micro data.manifest=datasets/pretrain/ run.out_dir=runs/micro": PRETRAIN,
    "endofm evaluate knn --data polypdiag/ --model endofm_vit_mini": QUIET,
    "endofm evaluate knn --data polypdiag/ --checkpoint runs/tiny/checkpoints/last.pt --pool max": QUIET,
    # docs/finetuning.md
    "endofm finetune segment --data CVC-ClinicDB/ --init endo_fm.pth --out runs/cvc": SEGMENT,
    "endofm finetune detect --data KUMC/ --init endo_fm.pth --config detect --out runs/kumc": DETECT,
    "endofm finetune classify --config classify_original --data PolypDiag/ --init endo_fm.pth "
    "--out runs/polypdiag_original": CLASSIFY,
    "endofm finetune detect --config detect_original --data KUMC/ --init endo_fm.pth --out runs/kumc_original":
        DETECT,
    "endofm evaluate segment --checkpoint cvc.pth --data CVC-ClinicDB/ --empty-rule original": [],
    "endofm evaluate detect --checkpoint kumc.pth --data KUMC/ --split val": [],
    "endofm reproduce --data datasets/ --checkpoint endo_fm.pth --out runs/paper --device cuda": REPRODUCE,
    "endofm reproduce --data datasets/ --out runs/released --evaluate-only classify=polypdiag.pth segment=cvc.pth "
    "detect=kumc.pth": SMALL_DATA,
    # docs/prediction.md
    "endofm predict case.mp4 --checkpoint runs/cvc/model --out predictions_cvc/": ["--device", "cpu", "--quiet"],
    "endofm predict case.mp4 --checkpoint kumc.pth --out predictions_kumc/ --reference-seed 0":
        ["--device", "cpu", "--quiet"],
    "endofm embed my_videos/ --checkpoint models/endo_fm --out clips.npz": QUIET,
    "endofm visualize attention case.mp4 --checkpoint models/endo_fm --out attention/": SMALL_CLIP,
    # docs/performance.md
    "endofm embed my_videos/ --checkpoint models/endo_fm --out feats_int8.npz --int8": QUIET,
    "endofm pretrain --config cpu_tiny data.manifest=manifest.csv run.out_dir=runs/tiny_ckpt "
    "model.grad_checkpointing=true model.checkpoint_blocks=2": PRETRAIN,
    # docs/deployment.md
    "endofm stream case.mp4 --checkpoint polypdiag.pth --out live/ --video": ["--device", "cpu"],
    "endofm export polypdiag.pth polypdiag.onnx --int8": [],
    "endofm predict case.mp4 --checkpoint polypdiag.onnx --runtime onnxruntime --out predictions_onnx/":
        ["--device", "cpu", "--quiet"],
    "endofm stream case.mp4 --checkpoint polypdiag.onnx --out live_onnx/ --as-fast-as-possible": [],
}
# What a command must leave behind (beyond exiting with 0), by the command's first words.
OUTPUTS = {
    "endofm convert endo_fm.pth": "models/endo_fm/config.json", "endofm convert cvc.pth": "models/cvc/config.json",
    "endofm convert kumc.pth": "models/kumc/config.json", "endofm embed my_videos/ --checkpoint models/endo_fm "
    "--out feats_int8.npz": "feats_int8.npz", "endofm embed my_videos/ --checkpoint models/endo_fm --out clips.npz":
    "clips.npz", "endofm embed": "feats.npz",
    "endofm data scan my_videos/ --out manifest.csv": "manifest.csv", "endofm data scan my_videos/ --out videos.csv":
    "videos.csv", "endofm data synth": "datasets/corpus.json", "endofm data transcode": "my_videos_256",
    "endofm pretrain --config cpu_tiny data.manifest=manifest.csv run.out_dir=runs/tiny_ckpt":
    "runs/tiny_ckpt/teacher/config.json",
    "endofm pretrain --config cpu_tiny data": "runs/tiny/teacher/config.json",
    "endofm pretrain --config endofm_vit_base": "runs/base/teacher/config.json",
    "endofm pretrain --config cpu_micro": "runs/micro/teacher/config.json", "torchrun": "runs/ddp/teacher/config.json",
    "endofm finetune classify --data": "runs/polypdiag/metrics.json",
    "endofm finetune classify --config classify_original": "runs/polypdiag_original/metrics.json",
    "endofm finetune segment": "runs/cvc/metrics.json", "endofm finetune detect --data": "runs/kumc/metrics.json",
    "endofm finetune detect --config detect_original": "runs/kumc_original/metrics.json",
    "endofm evaluate classify": "metrics.json", "endofm predict case.mp4 --checkpoint runs/polypdiag":
    "predictions/annotated.mp4", "endofm predict case.mp4 --checkpoint runs/cvc": "predictions_cvc/masks.npz",
    "endofm predict case.mp4 --checkpoint kumc.pth": "predictions_kumc/predictions.json",
    "endofm reproduce --data datasets/ --checkpoint": "runs/paper/reproduce.md",
    "endofm reproduce --data datasets/ --out runs/released": "runs/released/reproduce.json",
    "endofm visualize": "attention/attention_grid.png",
    "endofm stream case.mp4 --checkpoint polypdiag.pth": "live/summary.json",
    "endofm export": "polypdiag.int8.onnx",
    "endofm predict case.mp4 --checkpoint polypdiag.onnx": "predictions_onnx/predictions.json",
    "endofm stream case.mp4 --checkpoint polypdiag.onnx": "live_onnx/frames.jsonl",
}
# Set-up commands, checked rather than run: `make` targets against the Makefile's recipes, `pip` against
# pyproject.toml.
MAKE = {"make demo": "$(VENV)/bin/endofm demo", "make test": "$(PY) -m pytest -q"}
PIP = {"pip install .", "pip wheel --no-deps -w dist .", "pip install .[hub]", "pip install .[onnx]"}
# Python blocks: the released sizes -> the mini model's.
PYTHON_TINY = {'"endofm_vit_base"': '"endofm_vit_mini"', "(2, 3, 8, 224, 224)": "(2, 3, 2, 64, 64)",
               "(1, 3, 8, 224, 224)": "(1, 3, 2, 64, 64)"}


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def page_commands(page: Path) -> list[str]:
    """Shell commands of a page's bash blocks: continuation lines joined, trailing comments dropped."""
    commands = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


def all_commands() -> list[str]:
    return [command for page in PAGES for command in page_commands(page)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _released_models(root: Path) -> None:
    """Tiny models in the layouts of the original's three released fine-tuned models, each 64 wide per head."""
    torch.manual_seed(0)
    backbone = build_model("endofm_vit_micro", embed_dim=64, num_heads=1)
    torch.save({"backbone_state_dict": {f"module.{k}": v for k, v in backbone.state_dict().items()},
                "state_dict": {f"module.{k}": v for k, v in LinearClassifier(64, 2).state_dict().items()},
                "epoch": 20, "best_f1": 0.9}, root / "polypdiag.pth")
    transunet = TransUNet(TransUNetConfig(hidden=64, depth=1, num_heads=1, resnet_width=32, resnet_units=(1, 1, 1),
                                          decoder_channels=(8, 8, 8, 8)))
    torch.save(transunet.state_dict(), root / "cvc.pth")
    detector = STFTDetector(STFTConfig(BackboneConfig(embed_dim=64, depth=1, num_heads=1, img_size=64, num_frames=4),
                                       out_channels=32, num_convs=1))
    torch.save({"model": detector.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {"milestones": (64000, 80000, 88000)}, "iteration": 96000}, root / "kumc.pth")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with small stand-ins for every file the pages name."""
    backbone = build_model("endofm_vit_mini")
    export_original(tmp_path / "endo_fm.pth", backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    export_original(tmp_path / "kinetics400_vitb_ssl.pth", backbone, DINOHead(backbone.embed_dim, 64, 32, 16))
    _released_models(tmp_path)
    write_pretrain(tmp_path / "my_videos", 2, num_frames=12, size=64)
    for name in ("polypdiag", "PolypDiag"):
        write_polypdiag(tmp_path / name, 6, num_frames=8, size=64)
    write_cvc(tmp_path / "CVC-ClinicDB", 4, length_range=(3, 4), size=64)
    write_kumc(tmp_path / "KUMC", 3, num_frames=4, size=64)
    write_video(tmp_path / "case.mp4", render_video(0, 8, 64, polyp=True).frames)
    (tmp_path / "tiny_datasets").mkdir()
    for name in ("PolypDiag", "CVC-ClinicDB", "KUMC"):  # the original folder names, as endofm reproduce finds them
        (tmp_path / "tiny_datasets" / name).symlink_to(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check_setup_command(command: str) -> None:
    if command in MAKE:
        makefile = (REPO / "Makefile").read_text()
        body = re.search(rf"^{command.split()[1]}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
        assert body and MAKE[command] in body.group(1), command
        return
    assert command in PIP, command
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\nendofm = "', pyproject, flags=re.M), "pip install gives the command"
    extras = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    for extra in re.findall(r"\.\[(\w+)\]", command):
        assert re.search(rf"^{extra} = \[", extras, flags=re.M), f"{command}: no extra {extra!r} in pyproject.toml"


def _run(command: str, workspace: Path) -> None:
    args = shlex.split(command)
    at = args.index("--resume") if "--resume" in args else len(args)  # overrides go before the flag
    args[at:at] = TINY[command]
    if not torch.cuda.is_available():
        args = ["cpu" if arg in ("cuda", "cuda:0") else arg for arg in args]
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
    assert expected is None or (workspace / expected).exists(), f"{command} did not write {expected}"


def _run_python(block: str, page: Path) -> dict:
    code = block
    for released, tiny in PYTHON_TINY.items():
        code = code.replace(released, tiny)
    namespace: dict = {}
    exec(compile(code, str(page), "exec"), namespace)
    return namespace


def test_the_pages_list_only_commands_this_test_runs():
    commands = all_commands()
    setup = set(MAKE) | PIP
    assert set(commands) - setup == set(TINY), "page commands and TINY differ"
    assert page_commands(README)[:2] == ["make demo", "make test"], "the README starts with the two set-up commands"
    for command in set(commands) & setup:
        _check_setup_command(command)
    for prefix in OUTPUTS:
        assert any(command.startswith(prefix) for command in TINY), f"OUTPUTS: no command starts {prefix!r}"
    assert sorted(DOCS.glob("*.md")) == sorted(PAGES[1:]), "every docs page is in PAGES"
    readme = README.read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"the README links {page.name}"


@pytest.mark.slow
def test_every_page_command_and_python_block_runs_at_tiny_scale(workspace):
    done: set[str] = set()
    for page in PAGES:
        for command in page_commands(page):
            if command in MAKE or command in PIP or command in done:
                continue
            _run(command, workspace)
            done.add(command)
        for block in blocks(page, "python"):
            namespace = _run_python(block, page)
            if "emb" in namespace:
                assert namespace["emb"].features.shape[1] == namespace["model"].embed_dim, page.name
            if "seg" in namespace:
                assert (namespace["clf"].task, namespace["seg"].task, namespace["det"].task) == (
                    "classify", "segment", "detect")
                assert namespace["logits"].shape == (1, 2, 2, 224, 224)
            if "probability" in namespace:
                assert 0.0 <= float(namespace["probability"]) <= 1.0
            if "plain" in namespace:
                torch.testing.assert_close(namespace["plain"], namespace["fast"], atol=1e-4, rtol=1e-4)
    assert (workspace / "my-model" / "config.json").is_file()
    assert done == set(TINY)
