"""Heads that sit on the backbone's clip embedding: the DINO projection head and a linear classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofm.models.backbone import check_pool


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation, ``W = g * V / ||V||`` (row-wise).

    Stored as ``weight_g [out, 1]`` and ``weight_v [out, in]``, the keys ``nn.utils.weight_norm`` produced
    in the original code. With ``freeze_norm`` (the original's ``norm_last_layer``) ``g`` is fixed to 1.
    """

    def __init__(self, in_dim: int, out_dim: int, freeze_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_norm)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """Projection head of the DINO-style pretraining: MLP -> L2-normalise -> weight-normalised linear.

    Module indices inside ``mlp`` match the original (Linear at 0, 2, 4 with GELUs between; with
    ``use_bn`` a BatchNorm follows each hidden Linear), so original ``head.*`` keys load unchanged.

    Example:
        >>> head = DINOHead(in_dim=96, out_dim=1024, hidden_dim=128, bottleneck_dim=32)
        >>> head(torch.randn(4, 96)).shape
        torch.Size([4, 1024])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.config = {
            "in_dim": in_dim,
            "out_dim": out_dim,
            "hidden_dim": hidden_dim,
            "bottleneck_dim": bottleneck_dim,
            "num_layers": num_layers,
            "use_bn": use_bn,
            "norm_last_layer": norm_last_layer,
        }
        if num_layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (num_layers - 1)
            for layer_in, layer_out in zip(dims[:-1], dims[1:], strict=True):
                layers.append(nn.Linear(layer_in, layer_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(layer_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, freeze_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class LinearClassifier(nn.Module):
    """A linear layer on a clip embedding: the CLS embedding, as the original PolypDiag fine-tuning used
    (``linear.*``), or with ``pool="mean"``/``"max"`` the mean or maximum of the patch tokens (see
    :meth:`~endofm.models.backbone.EndoFMBackbone.forward_pooled`, which takes ``classifier.pool``)."""

    def __init__(self, in_dim: int, num_labels: int, pool: str = "cls") -> None:
        super().__init__()
        self.pool = check_pool(pool)
        self.config = {"in_dim": in_dim, "num_labels": num_labels, "pool": pool}
        self.linear = nn.Linear(in_dim, num_labels)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
