"""Several processes train as one: a 2-node run (c10d rendezvous, gloo on 127.0.0.1) against 1 process, for
pretraining and each fine-tuning task with drop path on; exact resume under DDP; an unshared run folder;
elastic restarts; the global batch that does not divide."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from endofm.cli.main import main
from endofm.config import load_config
from endofm.data.encoding import write_video
from endofm.data.synthetic import render_video, write_cvc, write_kumc, write_polypdiag
from endofm.errors import ConfigError, TrainingError
from endofm.pretrain import PretrainConfig, pretrain
from endofm.tasks.detect.stft_inference import evaluate_loaded_stft
from endofm.tasks.loading import load_finetuned
from endofm.tasks.registry import TASKS as TASKS_BY_NAME
from endofm.tasks.results import json_safe

DRIVER = Path(__file__).with_name("ddp_driver.py")
TASKS = ("classify", "segment", "detect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ddp_data")
    for i in range(8):
        video = render_video(i, num_frames=12, size=48)
        write_video(root / "videos" / f"clip_{i}.mp4", video.frames, video.fps)
    return [root / "videos", write_polypdiag(root / "polypdiag", 20, seed=1, num_frames=8, size=32),
            write_cvc(root / "cvc", 6, seed=1, length_range=(4, 6), size=32),
            write_kumc(root / "kumc", 4, seed=1, num_frames=6, size=32)]


@pytest.fixture(scope="module")
def runs(data: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The driver alone, and on 2 "nodes" of 1 process each, started together."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", str(DRIVER), str(two), *map(str, data)]
    launches = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for command in (node, node, [sys.executable, str(DRIVER), str(one), *map(str, data)])]
    outputs = []
    try:
        for launch in launches:
            outputs.append(launch.communicate(timeout=400)[0])
    finally:
        for launch in launches:
            launch.kill()
    for launch, output in zip(launches, outputs, strict=True):
        assert launch.returncode == 0, output[-3000:]
    return one, two


def _losses(path: Path) -> list[tuple]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r.get("step"), r.get("loss", r.get("mean_loss"))) for r in records]


def _flat(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics (per sequence, per class) as one level of numbers."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = value
    return flat


def _assert_same_log(a: Path, b: Path, rel: float) -> None:
    expected, actual = _losses(a), _losses(b)
    assert [r[0] for r in actual] == [r[0] for r in expected]
    for left, right in zip(expected, actual, strict=True):
        assert right[1:] == pytest.approx(left[1:], rel=rel, nan_ok=True)


def test_two_nodes_pretrain_as_one_process_with_drop_path(runs: tuple[Path, Path]) -> None:
    one, two = runs
    expected = torch.load(one / "pretrain" / "teacher_endo_fm.pth", weights_only=True)
    actual = torch.load(two / "pretrain" / "teacher_endo_fm.pth", weights_only=True)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5)
    _assert_same_log(one / "pretrain" / "log.jsonl", two / "pretrain" / "log.jsonl", 1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_two_nodes_finetune_as_one_process(runs: tuple[Path, Path], task: str) -> None:
    """Same weights (up to AdamW's first steps on float-rounding-sized gradients), losses and metrics."""
    one, two = runs
    for file in sorted((one / task / "model").glob("*.safetensors")):
        expected, actual = load_file(str(file)), load_file(str(two / task / "model" / file.name))
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=2e-3)
    _assert_same_log(one / task / "log.jsonl", two / task / "log.jsonl", 1e-5)
    expected, actual = (json.loads((run / task / "metrics.json").read_text()) for run in runs)
    for split, one_split, two_split in (("test", expected["test"], actual["test"]),
                                        ("val", expected["val_history"][-1], actual["val_history"][-1])):
        assert one_split.keys() == two_split.keys()
        flat_one, flat_two = _flat(one_split), _flat(two_split)
        assert flat_one.keys() == flat_two.keys()
        for key, value in flat_one.items():  # evaluated in shards, gathered: the same samples, the same metrics
            assert flat_two[key] == pytest.approx(value, abs=1e-3, nan_ok=True), (split, key)


def test_stft_trains_a_sample_per_process_and_evaluates_in_shards_as_one_process(data: list[Path],
                                                                                  runs: tuple[Path, Path]) -> None:
    """The original's multi-GPU STFT (one sample per process) runs; its evaluation, shared out by video over
    the processes, gives the metrics of one process evaluating every video."""
    _, two = runs
    alone = _flat(json_safe(evaluate_loaded_stft(load_finetuned(two / "detect_stft" / "model"), data[3], "train")))
    for rank in (0, 1):
        sharded = _flat(json.loads((two / f"rank{rank}.json").read_text())["stft_train"])
        assert sharded.keys() == alone.keys() and sharded["frames"] > 0
        for key, value in alone.items():
            assert sharded[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_the_transunet_trains_a_sequence_per_process_and_evaluates_in_shards_as_one_process(
        data: list[Path], runs: tuple[Path, Path]) -> None:
    """The default segmenter on whole sequences (one per process): its sharded test metrics are those of one
    process evaluating the saved model."""
    _, two = runs
    metrics = json.loads((two / "segment_transunet" / "metrics.json").read_text())
    loaded = load_finetuned(two / "segment_transunet" / "model")
    alone = _flat(json_safe(TASKS_BY_NAME["segment"].evaluate(loaded, str(data[2]), metrics["splits"]["test"])))
    sharded = _flat(metrics["test"])
    assert alone.keys() == sharded.keys() and sharded["frames"] > 0
    for key, value in alone.items():
        assert sharded[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_a_stopped_and_resumed_ddp_run_with_drop_path_equals_an_uninterrupted_one(runs: tuple[Path, Path]) -> None:
    _, two = runs
    expected = torch.load(two / "pretrain" / "teacher_endo_fm.pth", weights_only=True)
    resumed = torch.load(two / "resumed" / "teacher_endo_fm.pth", weights_only=True)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6)
    _assert_same_log(two / "pretrain" / "log.jsonl", two / "resumed" / "log.jsonl", 1e-6)


def test_an_unshared_run_folder_stops_every_process_with_one_message(runs: tuple[Path, Path]) -> None:
    _, two = runs
    for rank in (0, 1):
        seen = json.loads((two / f"rank{rank}.json").read_text())
        assert "process 1 cannot see rank 0's run folder" in seen["unshared"]
        assert "shared by every node" in seen["unshared"]
        assert seen["mean_count"] == 1.5, "a detection divisor: positives summed over processes, per process"


TOY = [
    "model.arch=endofm_vit_micro", "model.drop_path_rate=0.1", "model.head_out_dim=64", "model.head_hidden_dim=32",
    "model.head_bottleneck_dim=16", "data.views.global_frames=[2,4]", "data.views.global_size=32",
    "data.views.local_frames=[2,2]", "data.views.local_size=16", "data.views.decode_short_side=40",
    "run.epochs=2", "run.batch_size=4", "run.num_workers=0", "run.device=cpu", "run.progress=false",
    "run.max_steps=2",
]


def test_an_elastic_restart_resumes_a_run_of_the_same_config(data: list[Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    config = load_config(PretrainConfig, overrides=[*TOY, f"data.manifest={data[0]}", f"run.out_dir={tmp_path}"])
    pretrain(config)
    with pytest.raises(TrainingError, match="already holds a run: pass --resume"):
        pretrain(config)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert pretrain(config)["global_step"] == 2
    assert "resuming at epoch 2, step " in (out := capsys.readouterr().out) and "(step 3 of the run)" in out
    other = load_config(PretrainConfig, overrides=[*TOY, f"data.manifest={data[0]}", f"run.out_dir={tmp_path}",
                                                   "run.seed=5"])
    with pytest.raises(TrainingError, match="already holds a run"):
        pretrain(other)


def test_overrides_are_accepted_after_an_option(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["pretrain", "--config", "cpu_micro", f"run.out_dir={tmp_path}", "--resume", "run.nonsense=1"]) == 1
    assert "nonsense" in capsys.readouterr().err
    assert main(["pretrain", "--config", "cpu_micro", "--resume", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="run.dist_timeout"):
        load_config(PretrainConfig, overrides=["run.dist_timeout=0"])


def test_keyed_drop_path_is_per_sample_and_recomputed_alike_under_gradient_checkpointing() -> None:
    from endofm.models.registry import build_model
    from endofm.models.streams import keyed_rows, sample_keys

    torch.manual_seed(0)
    model = build_model("endofm_vit_micro", drop_path_rate=0.5).train()
    clips = torch.randn(4, 3, 2, 32, 32)
    keys = sample_keys(0, 3, [7, 1, 4, 9])
    grads = []
    for blocks in (0, len(model.blocks)):
        model.zero_grad()
        model.checkpointed_blocks = blocks
        with keyed_rows(keys):
            whole = model(clips)
        whole.square().sum().backward()  # outside the keyed forward: a recomputation must draw its masks again
        grads.append(model.pos_embed.grad.clone())
        with torch.no_grad():
            halves = []
            for part in (slice(0, 2), slice(2, 4)):  # split as over two processes
                with keyed_rows(keys[part]):
                    halves.append(model(clips[part]))
            torch.testing.assert_close(torch.cat(halves), whole, rtol=1e-5, atol=1e-6)
            with keyed_rows(sample_keys(0, 4, [7, 1, 4, 9])):
                assert not torch.allclose(model(clips), whole), "another epoch draws other masks"
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
