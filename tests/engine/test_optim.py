"""The shared optimiser: weight-decay groups and the fused AdamW."""

from __future__ import annotations

import torch
from torch import nn

from endofm.engine.optim import adamw, decay_groups


def test_biases_and_1d_parameters_get_no_weight_decay():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)
    decay, no_decay = decay_groups(model.named_parameters())
    assert decay["params"] == [model[0].weight]
    assert no_decay["params"] == [model[1].weight, model[1].bias] and no_decay["weight_decay"] == 0.0


def test_fused_adamw_steps_like_the_default_implementation():
    torch.manual_seed(0)
    models = [nn.Linear(8, 4), nn.Linear(8, 4)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [adamw(decay_groups(models[0].named_parameters()), lr=0.1, weight_decay=0.05),
                  torch.optim.AdamW(decay_groups(models[1].named_parameters()), lr=0.1, weight_decay=0.05)]
    assert optimizers[0].defaults["fused"] and not optimizers[1].defaults["fused"]
    initial = models[0].weight.detach().clone()
    x = torch.randn(16, 8)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert (models[0].weight - initial).abs().min() > 0  # every weight moved
    torch.testing.assert_close(models[0].weight, models[1].weight)
    torch.testing.assert_close(models[0].bias, models[1].bias)
