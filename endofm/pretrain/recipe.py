"""The Endo-FM pretraining recipe on the shared training engine, and :func:`pretrain`, its entry point."""

from __future__ import annotations

import copy
import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from endofm.config import config_to_dict, save_config
from endofm.data.datasets.pretrain import PretrainClips, collate_views
from endofm.data.manifest import read_pretrain_clips, scan_videos
from endofm.data.views import MultiViewSampler
from endofm.engine.distributed import DistributedContext, barrier, init_distributed
from endofm.engine.optim import adamw, decay_groups
from endofm.engine.runfolder import check_shared, decide_resume
from endofm.engine.schedules import cosine_schedule, teacher_temperature_schedule
from endofm.engine.trainer import LossPart, Recipe, Trainer
from endofm.errors import ConfigError, DatasetError
from endofm.models.backbone import EndoFMBackbone
from endofm.models.checkpoint import LoadedCheckpoint, export_original, save_pretrained
from endofm.models.factory import ArchitectureError, load_pretrained
from endofm.models.heads import DINOHead
from endofm.models.registry import build_model
from endofm.models.streams import current_keys, derive, keyed_rows
from endofm.pretrain.config import ModelConfig, PretrainConfig
from endofm.pretrain.ema import update_ema
from endofm.pretrain.loss import DINOLoss, KoLeoLoss


class MultiViewNetwork(nn.Module):
    """Backbone on each group of equally shaped views, then the head on all their CLS embeddings.

    ``forward(groups, keep_ratios)`` returns ``[sum of group sizes, K]`` in the order of the groups;
    ``keep_ratios`` (one per group, default all 1.0) drops patch tokens of a group (token-drop variant);
    with ``return_embeddings`` the backbone's CLS embeddings come back too, as ``(outputs, embeddings)``.
    ``group_views`` (the view indices of each group) keys each row's random draws by its sample, view and
    ``salt`` (:mod:`endofm.models.streams`) when the samples are keyed.
    """

    def __init__(self, backbone: EndoFMBackbone, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(
        self, groups: list[torch.Tensor], keep_ratios: list[float] | None = None, return_embeddings: bool = False,
        group_views: list[list[int]] | None = None, salt: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        keep_ratios = keep_ratios or [1.0] * len(groups)
        keys = current_keys()
        embeddings = []
        for index, (group, keep) in enumerate(zip(groups, keep_ratios, strict=True)):
            rows = None if keys is None or group_views is None else np.concatenate(
                [derive(keys, salt, view) for view in group_views[index]])
            with keyed_rows(rows):
                embeddings.append(self.backbone(group, keep_ratio=keep))
        embeddings = torch.cat(embeddings)
        outputs = self.head(embeddings)
        return (outputs, embeddings) if return_embeddings else outputs


KINETICS_WEIGHTS = "kinetics400_vitb_ssl.pth"
KINETICS_URL = "https://github.com/kahnchana/svt/releases/download/v1.0/kinetics400_vitb_ssl.pth"
"""SVT's Kinetics-400 weights, the original pretraining's initialisation (flat ``backbone.*`` + ``head.*``);
the original README downloads them from :data:`KINETICS_URL`."""
HEAD_FIELDS = ("in_dim", "out_dim", "hidden_dim", "bottleneck_dim", "num_layers", "use_bn")


def load_init(model: ModelConfig) -> LoadedCheckpoint | None:
    """The ``model.init`` checkpoint (``None`` without one), its backbone built as ``model.arch``
    (:func:`~endofm.models.factory.load_pretrained`: a file of other sizes is refused) with the student's
    stochastic depth; its head count is ``model.num_heads`` or the named architecture's."""
    if model.init is None:
        return None
    path = Path(model.init)
    if not path.exists():
        where = (f" The original pretraining starts from SVT's Kinetics-400 weights; the original README downloads "
                 f"them from {KINETICS_URL} (README section 'Use the original Endo-FM weights')."
                 if path.name == KINETICS_WEIGHTS else "")
        raise ConfigError(f"model.init {path} does not exist.{where} Give the file's path as model.init=PATH, or "
                          "model.init=null to start from random weights.")
    try:
        return load_pretrained(path, model.arch, model.num_heads, drop_path_rate=model.drop_path_rate)
    except ArchitectureError as error:
        raise ConfigError(f"model.init {model.init} does not fit model.arch={model.arch}: "
                          + ", ".join(error.differences)) from error


def build_head(model: ModelConfig, embed_dim: int, source: LoadedCheckpoint | None) -> DINOHead:
    """The configured DINO head, with the ``source`` head's weights when the file has a head; a file whose
    head has other sizes than ``model.head_*`` is refused, naming both."""
    head = DINOHead(embed_dim, model.head_out_dim, model.head_hidden_dim, model.head_bottleneck_dim,
                    norm_last_layer=model.norm_last_layer)
    if source is None or source.dino_head is None:
        return head
    found, wanted = source.dino_head.config, head.config
    if any(found[name] != wanted[name] for name in HEAD_FIELDS):
        sizes = ", ".join(f"{name} {found[name]} vs {wanted[name]}" for name in HEAD_FIELDS)
        raise ConfigError(
            f"model.init {model.init}: its DINO head does not fit the recipe's (file vs recipe: {sizes}); set "
            f"model.head_out_dim={found['out_dim']} model.head_hidden_dim={found['hidden_dim']} "
            f"model.head_bottleneck_dim={found['bottleneck_dim']} to start from it")
    head.load_state_dict(source.dino_head.state_dict())
    return head


def teacher_groups(groups: list[torch.Tensor], group_views: list[list[int]], num_global: int,
                   batch: int) -> list[torch.Tensor]:
    """The rows of the first ``num_global`` views, still grouped by shape."""
    selected = []
    for group, views in zip(groups, group_views, strict=True):
        count = sum(1 for v in views if v < num_global)
        if count:
            selected.append(group[: count * batch])
    return selected


def clip_per_parameter(parameters: Any, max_norm: float) -> None:
    """Scale each parameter's gradient to a norm of at most ``max_norm`` (the original's clipping)."""
    for param in parameters:
        if param.grad is not None:
            norm = param.grad.norm(2)
            param.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class DINORecipe(Recipe):
    """Self-distillation with an EMA teacher on global views and a student on all views."""

    plot_keys = ("loss", "lr", "momentum", "teacher_entropy", "weight_decay")

    def __init__(self, config: PretrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.device = context.device
        model = config.model
        source = load_init(model)
        student_backbone = (source.backbone.train() if source is not None else
                            build_model(model.arch, drop_path_rate=model.drop_path_rate))
        student_backbone.set_grad_checkpointing(model.grad_checkpointing, blocks=model.checkpoint_blocks)
        head = build_head(model, student_backbone.embed_dim, source)
        self.network = MultiViewNetwork(student_backbone, head).to(self.device)
        teacher_drop = model.drop_path_rate if model.teacher_drop_path is None else model.teacher_drop_path
        teacher_backbone = EndoFMBackbone(dataclasses.replace(student_backbone.config, drop_path_rate=teacher_drop))
        self.teacher = MultiViewNetwork(teacher_backbone, copy.deepcopy(head)).to(self.device)
        self.teacher.load_state_dict(self.network.state_dict())
        # Train mode, as the original's teacher (never put in eval mode): its stochastic depth is active in
        # every forward. Dropout and attention dropout are 0 and the head has no batch norm, so drop path is
        # the only thing the mode changes; with teacher_drop_path=0 the teacher is deterministic.
        self.teacher.requires_grad_(False).train()
        if model.compile:  # in place, so state-dict keys and exports stay as they are
            student_backbone.compile(dynamic=False)
            teacher_backbone.compile(dynamic=False)
        self.num_views = len(config.data.views.views)
        self.loss = DINOLoss(model.head_out_dim, self.num_views, 2, config.loss.student_temp,
                             config.loss.center_momentum, config.loss.centering).to(self.device)
        self.koleo = KoLeoLoss()

    def configure(self, steps_per_epoch: int, epochs: int) -> torch.optim.Optimizer:
        optim, loss = self.config.optim, self.config.loss
        peak_lr = optim.lr * self.config.run.batch_size / 256.0
        self.lr = cosine_schedule(peak_lr, optim.min_lr, epochs, steps_per_epoch, optim.warmup_epochs)
        self.weight_decay = cosine_schedule(optim.weight_decay, optim.weight_decay_end, epochs, steps_per_epoch)
        self.momentum = cosine_schedule(optim.momentum_teacher, optim.momentum_teacher_end, epochs, steps_per_epoch)
        self.teacher_temp = teacher_temperature_schedule(loss.warmup_teacher_temp, loss.teacher_temp,
                                                         loss.warmup_teacher_temp_epochs, epochs)
        return adamw(decay_groups(self.network.named_parameters()))

    def before_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        for index, group in enumerate(optimizer.param_groups):
            group["lr"] = float(self.lr[step])
            if index == 0:
                group["weight_decay"] = float(self.weight_decay[step])
        return {"lr": float(self.lr[step]), "weight_decay": float(self.weight_decay[step]),
                "momentum": float(self.momentum[step]), "teacher_temp": float(self.teacher_temp[epoch])}

    def compute_loss(self, network: nn.Module, batch: dict, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of all views in one graph."""
        return self._loss_parts(network, batch, epoch, per_group=False)[0]()

    def loss_parts(self, network: nn.Module, batch: dict, epoch: int) -> list[LossPart]:
        """With ``model.backward_per_group``, one part per group of equally shaped views (the teacher runs
        once, for all); else the one part of :meth:`compute_loss`."""
        if not self.config.model.backward_per_group:
            return super().loss_parts(network, batch, epoch)
        return self._loss_parts(network, batch, epoch, per_group=True)

    def _loss_parts(self, network: nn.Module, batch: dict, epoch: int, per_group: bool) -> list[LossPart]:
        groups = [group.to(self.device, non_blocking=True) for group in batch["groups"]]
        local_batch = len(batch["meta"]["path"])
        with torch.no_grad():
            teacher_views = [[v for v in views if v < 2] for views in batch["group_views"] if views[0] < 2]
            teacher_out = self.teacher(teacher_groups(groups, batch["group_views"], 2, local_batch),
                                       group_views=teacher_views, salt=1)
            targets = self.loss.teacher_probabilities(teacher_out, float(self.teacher_temp[epoch]))
            entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(dim=-1).mean())
            self.loss.update_center(teacher_out)
        pairs = list(zip(groups, batch["group_views"], strict=True))
        parts = [[pair] for pair in pairs] if per_group else [pairs]
        return [partial(self._student_loss, network, part, targets, {"teacher_entropy": entropy} if index == 0 else {})
                for index, part in enumerate(parts)]

    def _student_loss(self, network: nn.Module, groups: list[tuple[torch.Tensor, list[int]]], targets: torch.Tensor,
                      metrics: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss terms of the student on these groups of views (and their share of the KoLeo term)."""
        keep = self.config.model.token_keep_ratio
        keep_ratios = [keep if views[0] < 2 else 1.0 for _, views in groups]
        student_out, embeddings = network([group for group, _ in groups], keep_ratios, return_embeddings=True,
                                          group_views=[views for _, views in groups])
        views = [view for _, group_views in groups for view in group_views]
        loss = self.loss.student_loss(student_out, views, targets)
        weight = self.config.loss.koleo_weight
        global_rows = [rows for view, rows in zip(views, embeddings.chunk(len(views)), strict=True) if view < 2]
        if weight > 0 and global_rows:
            koleo = sum(self.koleo(rows) for rows in global_rows) / 2
            loss = loss + weight * koleo
            metrics = {**metrics, "koleo": float(koleo.detach())}
        return loss, metrics

    def after_backward(self, epoch: int) -> None:
        if self.config.optim.clip_grad > 0:
            clip_per_parameter(self.network.parameters(), self.config.optim.clip_grad)
        if epoch < self.config.optim.freeze_last_layer_epochs:
            for param in self.network.head.last_layer.parameters():
                param.grad = None

    def after_step(self, step: int) -> None:
        update_ema(self.teacher, self.network, float(self.momentum[step]))

    def batch_size(self, batch: dict) -> int:
        return len(batch["meta"]["path"])

    def skipped(self, batch: dict) -> list[str]:
        return batch["skipped"]

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "center": self.loss.center}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.loss.center.copy_(state["center"])

    def finish(self, out_dir: Path) -> dict[str, str]:
        metadata = {"source": "endofm pretrain", "run": str(out_dir)}
        ours = save_pretrained(out_dir / "teacher", self.teacher.backbone, self.teacher.head, metadata=metadata)
        original = export_original(out_dir / "teacher_endo_fm.pth", self.teacher.backbone, self.teacher.head)
        return {"teacher": str(ours), "teacher_original_layout": str(original)}


def _clips(config: PretrainConfig, out_dir: Path, context: DistributedContext, resume: bool = False) -> list:
    source = Path(config.data.manifest) if config.data.manifest else None
    if source is None:
        raise ConfigError("data.manifest is not set: give a manifest CSV (endofm data scan) or a folder of videos")
    if not source.exists():
        raise ConfigError(f"data.manifest {source} does not exist")
    if source.is_dir() and (source / "train.csv").is_file():  # the original's --data_path: reads its train.csv
        source = source / "train.csv"
    if source.is_dir():
        manifest = out_dir / "manifest.csv"  # scanned once, by rank 0; a resumed run reads it again
        if context.is_main and not (resume and manifest.is_file()):
            scan_videos(source, manifest, clip_seconds=config.data.clip_seconds, progress=config.run.progress)
        barrier()
        source = manifest
    clips = read_pretrain_clips(source)
    if not clips:
        raise DatasetError(f"{source}: no readable clips (every file failed or the manifest is empty)")
    return clips


def pretrain(config: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or with ``resume`` continue) a pretraining run; returns the last epoch's summary and exports."""
    context = init_distributed(config.run.device, config.run.dist_timeout)
    out_dir = Path(config.run.out_dir)
    check_shared(out_dir, context)
    resume = decide_resume(out_dir, context, resume, config_to_dict(config))
    clips = _clips(config, out_dir, context, resume)
    if config.run.batch_size > len(clips):
        raise ConfigError(f"run.batch_size={config.run.batch_size} is larger than the dataset ({len(clips)} clips)")
    if config.run.batch_size % context.world_size:
        raise ConfigError(f"run.batch_size={config.run.batch_size} is not divisible by {context.world_size} processes")
    if context.is_main:
        save_config(config, out_dir / "config.yaml")
    torch.manual_seed(config.run.seed)
    recipe = DINORecipe(config, context)
    dataset = PretrainClips(clips, MultiViewSampler(config.data.views), seed=config.run.seed)
    if config.data.cache:
        dataset.cache_decoded(int(config.data.cache_max_gib * 2**30), progress=config.run.progress and context.is_main)
    trainer = Trainer(recipe, dataset, collate_views, config.run, context, config_to_dict(config))
    return trainer.fit(resume=resume)
