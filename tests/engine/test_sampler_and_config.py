"""Batch order across processes and resumes; typed configs with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from endofm.config import list_recipes, load_config, save_config
from endofm.engine.sampler import ShardedBatchSampler
from endofm.errors import ConfigError, InputError
from endofm.pretrain import PretrainConfig
from endofm.tasks.classify import ClassifyConfig
from endofm.tasks.detect import DetectConfig
from endofm.tasks.segment import SegmentConfig

CONFIGS = Path(__file__).resolve().parents[2] / "endofm" / "configs"


def test_processes_together_see_the_single_process_batches():
    single = list(ShardedBatchSampler(20, 4, seed=3))
    shards = [list(ShardedBatchSampler(20, 4, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(single) == 5
    for step, batch in enumerate(single):
        assert sorted(shards[0][step] + shards[1][step]) == sorted(batch)
    assert sorted(i for b in single for i in b) == list(range(20))


def test_epochs_reshuffle_and_resume_skips_done_steps():
    sampler = ShardedBatchSampler(12, 3, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0, start_step=2)
    assert list(sampler) == first[2:] and len(sampler) == 2


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(InputError, match="larger than the dataset"):
        ShardedBatchSampler(3, 4)
    with pytest.raises(InputError, match="multiple"):
        ShardedBatchSampler(30, 5, world_size=2)


def test_recipe_files_load_and_round_trip(tmp_path):
    config = load_config(PretrainConfig, "endofm_vit_base")
    assert config.data.views.local_frames == (2, 2, 4, 4, 8, 8, 16, 16) and config.model.head_out_dim == 65536
    tiny = load_config(PretrainConfig, "cpu_tiny", ["run.epochs=3", "optim.lr=1e-3"])
    assert tiny.run.epochs == 3 and tiny.optim.lr == 1e-3 and tiny.model.arch == "endofm_vit_mini"
    save_config(tiny, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == tiny


def test_every_shipped_recipe_is_listed():
    for kind in ("pretrain", "finetune"):
        files = sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))
        assert files and list_recipes(kind) == files


@pytest.mark.parametrize("recipe", list_recipes("pretrain"))
def test_every_pretraining_recipe_loads(recipe):
    config = load_config(PretrainConfig, recipe, kind="pretrain")
    assert config.model.arch and config.data.views.global_size % 8 == 0
    assert load_config(PretrainConfig, CONFIGS / "pretrain" / f"{recipe}.yaml") == config, "a path still works"


@pytest.mark.parametrize("recipe", list_recipes("finetune"))
def test_every_finetuning_recipe_loads(recipe):
    task = recipe.split("_")[0]
    config_class = {"classify": ClassifyConfig, "segment": SegmentConfig, "detect": DetectConfig}[task]
    assert load_config(config_class, f"finetune/{recipe}").run.epochs > 0


def test_an_unknown_recipe_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"'cpu_mikro'.*cpu_micro"):
        load_config(PretrainConfig, "cpu_mikro", kind="pretrain")
    with pytest.raises(ConfigError, match="no shipped recipe"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.learning_rate=1", "unknown config key optim.learning_rate"),
        ("run.epochs=many", "run.epochs: expected an integer"),
        ("model.arch=resnet50", "^model.arch 'resnet50'"),
        ("model.checkpoint_blocks=13", "^model.checkpoint_blocks must be between 0 and endofm_vit_base's depth 12"),
        ("data.views.flip_p=3", "flip_p must be a probability"),
        ("run.precision=fp8", "run.precision"),
        ("lr", "not of the form key=value"),
    ],
)
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PretrainConfig, overrides=[override])


def test_a_section_given_in_part_keeps_the_fields_defaults_of_its_owner():
    """``run.out_dir=...`` alone leaves the task's own run defaults (batch size, epochs), not RunConfig's."""
    for config_class in (ClassifyConfig, SegmentConfig, DetectConfig):
        defaults = config_class()
        config = load_config(config_class, overrides=["run.out_dir=elsewhere", "optim.lr=0.5"])
        assert config.run.out_dir == "elsewhere" and config.optim.lr == 0.5
        assert config.run.batch_size == defaults.run.batch_size and config.run.epochs == defaults.run.epochs
        assert config.optim.name == defaults.optim.name


def test_keeping_the_last_smaller_batch_as_the_originals_dataloader():
    """``drop_last=False`` (the original PolypDiag loader): every sample once per epoch, the last batch smaller,
    and a resumed epoch skips the batches already done."""
    sampler = ShardedBatchSampler(10, 4, seed=3, drop_last=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(i for b in batches for i in b) == list(range(10))
    assert len(sampler) == sampler.steps == 3
    sampler.set_epoch(0, start_step=2)
    assert list(sampler) == batches[2:]
    assert ShardedBatchSampler(10, 4).steps == 2
    with pytest.raises(InputError, match="one process"):
        ShardedBatchSampler(10, 4, world_size=2, drop_last=False)
