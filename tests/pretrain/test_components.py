"""The recipe's small components against direct statements of their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from endofm.config import load_config
from endofm.engine.schedules import cosine_schedule
from endofm.errors import ConfigError
from endofm.pretrain import DINOLoss, PretrainConfig, teacher_temperature_schedule, update_ema
from endofm.pretrain.loss import KoLeoLoss, sinkhorn_knopp
from endofm.pretrain.recipe import clip_per_parameter, teacher_groups


def reference_dino_loss(student, teacher, center, views, student_temp, teacher_temp):
    """Loop over samples and pairs, with softmax written out."""
    batch = teacher.shape[0] // 2
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(views):
            if v == i:
                continue
            for b in range(batch):
                t = teacher[i * batch + b] - center[0]
                q = torch.exp(t / teacher_temp) / torch.exp(t / teacher_temp).sum()
                s = student[v * batch + b] / student_temp
                log_p = s - torch.log(torch.exp(s).sum())
                total += float(-(q * log_p).sum()) / batch
            terms += 1
    return total / terms


def test_dino_loss_and_center_follow_the_formula():
    torch.manual_seed(0)
    views, batch, dim = 5, 3, 7
    student, teacher = torch.randn(views * batch, dim), torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, views, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.copy_(torch.randn(1, dim) * 0.1)
    center = loss_fn.center.clone()
    loss = loss_fn(student, teacher, teacher_temp=0.07)
    assert math.isclose(float(loss), reference_dino_loss(student, teacher, center, views, 0.1, 0.07), rel_tol=1e-5)
    torch.testing.assert_close(loss_fn.center, 0.9 * center + 0.1 * teacher.mean(dim=0, keepdim=True))


def test_dino_loss_gradient_reaches_only_the_student():
    student = torch.randn(4 * 2, 5, requires_grad=True)
    teacher = torch.randn(2 * 2, 5, requires_grad=True)
    DINOLoss(5, 4)(student, teacher, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_schedules():
    lr = cosine_schedule(1.0, 0.1, epochs=3, steps_per_epoch=4, warmup_epochs=1)
    assert len(lr) == 12 and lr[0] == 0.0 and np.allclose(lr[:4], [0, 1 / 3, 2 / 3, 1])
    steps = np.arange(8)
    assert np.allclose(lr[4:], 0.1 + 0.45 * (1 + np.cos(np.pi * steps / 8)))
    assert np.all(np.diff(lr[4:]) < 0)
    assert teacher_temperature_schedule(0.04, 0.07, 2, 4).tolist() == [0.04, 0.07, 0.07, 0.07]


def test_ema_moves_the_teacher_towards_the_student():
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    before = teacher.weight.detach().clone()
    update_ema(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())


def test_clipping_is_per_parameter():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.3, 0.4, 0.0])
    clip_per_parameter([a, b], 1.0)
    assert math.isclose(float(a.grad.norm()), 1.0, rel_tol=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4, 0.0]))


def test_teacher_sees_only_the_global_views():
    batch = 2
    groups = [torch.arange(2 * batch), torch.arange(100, 104), torch.arange(200, 202)]
    picked = teacher_groups(groups, [[0, 1], [2, 3], [4]], num_global=2, batch=batch)
    assert [g.tolist() for g in picked] == [[0, 1, 2, 3]]
    picked = teacher_groups([torch.arange(2), torch.arange(10, 12), torch.arange(20, 24)], [[0], [1], [2, 3]], 2, 2)
    assert [g.tolist() for g in picked] == [[0, 1], [10, 11]]


def test_token_drop_keeps_cls_and_whole_positions():
    from endofm import InputError, build_model

    model = build_model("endofm_vit_micro").eval()
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        full = model(video)
        # keeping every position in a shuffled order must not change the CLS: attention is order-free
        torch.testing.assert_close(model(video, keep_ratio=0.99), full, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(model(video, keep_ratio=0.25), full, atol=1e-3)
    tokens = torch.arange(2 * 3 * 17, dtype=torch.float32).view(2, 3, 17, 1).expand(2, 3, 17, 4)
    kept = model._keep_random_positions(tokens, 0.25)
    assert kept.shape == (2, 3, 5, 4)
    assert torch.equal(kept[:, :, 0], tokens[:, :, 0])  # the CLS slot stays first
    assert torch.equal(kept[0] - tokens[0, :, :1], kept[1] - tokens[1, :, :1])  # same positions in every frame
    with pytest.raises(InputError, match="keep_ratio"):
        model(video, keep_ratio=0.0)


def test_token_drop_applies_to_the_students_global_views_only(monkeypatch):
    from endofm.config import load_config
    from endofm.engine.distributed import DistributedContext
    from endofm.pretrain import PretrainConfig
    from endofm.pretrain.recipe import DINORecipe

    config = load_config(PretrainConfig, overrides=[
        "model.arch=endofm_vit_micro", "model.head_out_dim=32", "model.head_hidden_dim=16",
        "model.head_bottleneck_dim=8", "model.token_keep_ratio=0.5", "data.views.global_frames=[2,2]",
        "data.views.global_size=32", "data.views.local_frames=[2]", "data.views.local_size=16",
        "run.batch_size=2", "run.device=cpu"])
    recipe = DINORecipe(config, DistributedContext())
    seen = []
    original = type(recipe.network.backbone).forward

    def spy(self, x, keep_ratio=1.0):
        seen.append((self is recipe.network.backbone, x.shape[-1], keep_ratio))
        return original(self, x, keep_ratio)

    monkeypatch.setattr(type(recipe.network.backbone), "forward", spy)
    batch = {"groups": [torch.randn(4, 3, 2, 32, 32), torch.randn(2, 3, 2, 16, 16)], "group_views": [[0, 1], [2]],
             "meta": {"path": ["a", "b"]}}
    recipe.configure(steps_per_epoch=1, epochs=1)
    loss, _ = recipe.compute_loss(recipe.network, batch, epoch=0)
    assert torch.isfinite(loss)
    assert (True, 32, 0.5) in seen and (True, 16, 1.0) in seen and (False, 32, 1.0) in seen


def test_compile_option_compiles_both_backbones_in_place(monkeypatch):
    from endofm.config import load_config
    from endofm.engine.distributed import DistributedContext
    from endofm.pretrain import PretrainConfig
    from endofm.pretrain.recipe import DINORecipe

    compiled = []

    def record(fn, **options):
        compiled.append((fn.__self__, options))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    overrides = ["model.arch=endofm_vit_micro", "model.head_out_dim=32", "model.head_hidden_dim=16",
                 "model.head_bottleneck_dim=8", "run.device=cpu"]
    plain = DINORecipe(load_config(PretrainConfig, overrides=overrides), DistributedContext())
    assert compiled == []
    recipe = DINORecipe(load_config(PretrainConfig, overrides=[*overrides, "model.compile=true"]),
                        DistributedContext())
    assert compiled == [(recipe.network.backbone, {"dynamic": False}), (recipe.teacher.backbone, {"dynamic": False})]
    assert list(recipe.network.state_dict()) == list(plain.network.state_dict())


def reference_sinkhorn(logits: np.ndarray, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn-Knopp written out on a [K, B] matrix in float64."""
    q = np.exp(logits - logits.max()).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_matches_the_formula_and_balances_prototypes():
    torch.manual_seed(0)
    logits = torch.randn(6, 10) * 3
    expected = torch.from_numpy(reference_sinkhorn(logits.numpy(), 3)).float()
    torch.testing.assert_close(sinkhorn_knopp(logits, 3), expected)
    q = sinkhorn_knopp(logits, iterations=200)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(q.sum(dim=0), torch.full((10,), 0.6), atol=1e-4, rtol=1e-4)


def test_sinkhorn_ignores_shifts_and_separates_look_alike_samples():
    torch.manual_seed(0)
    logits = torch.randn(4, 16)
    shifted = logits + torch.randn(4, 1) + torch.randn(1, 16)
    torch.testing.assert_close(sinkhorn_knopp(shifted, 50), sinkhorn_knopp(logits, 50), atol=1e-5, rtol=1e-4)
    # Outputs that barely differ and share one dominant prototype: centred with a centre that has not caught up,
    # every sample gets the same target; Sinkhorn-Knopp spreads them over several prototypes.
    near = torch.eye(16)[:1].expand(8, 16) + 1e-2 * torch.randn(8, 16)
    centred = DINOLoss(16, 2).teacher_probabilities(near, teacher_temp=0.02)
    assert centred.argmax(1).unique().numel() == 1
    balanced = sinkhorn_knopp(near / 0.02)
    assert balanced.argmax(1).unique().numel() >= 4


def test_sinkhorn_centring_in_the_loss_uses_its_targets_and_leaves_the_centre():
    torch.manual_seed(0)
    views, batch, dim = 4, 3, 8
    student, teacher = torch.randn(views * batch, dim), torch.randn(2 * batch, dim)
    loss_fn = DINOLoss(dim, views, centering="sinkhorn")
    targets = sinkhorn_knopp(teacher / 0.05).chunk(2)
    logp = torch.log_softmax(student / 0.1, dim=-1).chunk(views)
    expected = sum(float(-(targets[i] * logp[v]).sum(-1).mean()) for i in range(2) for v in range(views) if v != i)
    assert math.isclose(float(loss_fn(student, teacher, 0.05)), expected / (2 * views - 2), rel_tol=1e-5)
    assert torch.count_nonzero(loss_fn.center) == 0
    with pytest.raises(ConfigError, match="loss.centering"):
        load_config(PretrainConfig, overrides=["loss.centering=mean"])


def test_koleo_is_minus_the_mean_log_nearest_neighbour_distance():
    torch.manual_seed(0)
    x = torch.randn(7, 5, requires_grad=True)
    z = torch.nn.functional.normalize(x.detach(), dim=1).numpy().astype(np.float64)
    distances = np.linalg.norm(z[:, None] - z[None], axis=-1) + np.diag(np.full(7, np.inf))
    expected = -np.log(distances.min(axis=1)).mean()
    loss = KoLeoLoss()(x)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    loss.backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="loss.koleo_weight"):
        load_config(PretrainConfig, overrides=["loss.koleo_weight=-1"])


def _micro_recipe(*overrides: str):
    from endofm.engine.distributed import DistributedContext
    from endofm.pretrain.recipe import DINORecipe

    config = load_config(PretrainConfig, overrides=[
        "model.arch=endofm_vit_micro", "model.head_out_dim=32", "model.head_hidden_dim=16",
        "model.head_bottleneck_dim=8", "data.views.global_frames=[2,4]", "data.views.global_size=32",
        "data.views.local_frames=[2,2]", "data.views.local_size=16", "run.batch_size=2", "run.device=cpu",
        *overrides])
    torch.manual_seed(0)
    recipe = DINORecipe(config, DistributedContext())
    recipe.configure(steps_per_epoch=1, epochs=1)
    return recipe


def _backpropagate_parts(recipe, batch: dict, monkeypatch) -> tuple:
    """Run the recipe's loss parts as the trainer does; return the summed loss and values, the gradients, the
    order of backbone forwards and backwards, and the loss centre."""
    events = []
    backbone = recipe.network.backbone
    original_forward = type(backbone).forward

    def spy(self, x, keep_ratio=1.0):
        events.append("forward" if self is backbone else "teacher")
        return original_forward(self, x, keep_ratio)

    monkeypatch.setattr(type(backbone), "forward", spy)
    backbone.patch_embed.proj.weight.register_hook(lambda grad: events.append("backward"))
    torch.manual_seed(1)  # drop path and token drop draw the same numbers in both modes
    loss, values = torch.zeros(()), {}
    for part in recipe.loss_parts(recipe.network, batch, epoch=0):
        part_loss, part_values = part()
        part_loss.backward()
        loss += part_loss.detach()
        values.update({k: values.get(k, 0.0) + v for k, v in part_values.items()})
    monkeypatch.undo()
    grads = {name: p.grad.clone() for name, p in recipe.network.named_parameters() if p.grad is not None}
    return loss, values, grads, events, recipe.loss.center.clone()


@pytest.mark.parametrize("centering", ["center", "sinkhorn"])
def test_backward_per_group_gives_the_gradient_of_the_whole_loss_one_group_at_a_time(monkeypatch, centering):
    batch = {"groups": [torch.randn(2, 3, 2, 32, 32), torch.randn(2, 3, 4, 32, 32), torch.randn(4, 3, 2, 16, 16)],
             "group_views": [[0], [1], [2, 3]], "meta": {"path": ["a", "b"]}}
    whole, split = (_backpropagate_parts(_micro_recipe(
        f"model.backward_per_group={per_group}", "model.drop_path_rate=0.3", "model.token_keep_ratio=0.5",
        "loss.koleo_weight=0.1", f"loss.centering={centering}"), batch, monkeypatch) for per_group in (False, True))
    assert whole[3] == ["teacher", "teacher", "forward", "forward", "forward", "backward"]
    assert split[3] == ["teacher", "teacher", "forward", "backward", "forward", "backward", "forward", "backward"]
    torch.testing.assert_close(split[0], whole[0])
    assert split[1].keys() == whole[1].keys() == {"teacher_entropy", "koleo"}
    for key in whole[1]:
        assert math.isclose(split[1][key], whole[1][key], rel_tol=1e-5)
    assert split[2].keys() == whole[2].keys() and len(whole[2]) > 10
    for name, grad in whole[2].items():  # equal up to the order of float sums
        assert float((split[2][name] - grad).norm()) <= 1e-4 * float(grad.norm()), name
    torch.testing.assert_close(split[4], whole[4])
