"""LoRA: train a low-rank update beside frozen linear weights (Hu et al., 2021).

`apply_lora` swaps the transformer's nn.Linear layers for LoRALinear and freezes everything else;
`merge_lora` folds the update back in, so a fine-tuned checkpoint is a plain model again.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # B = 0: training starts from the base model

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scaling
        return self.base


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=DEFAULT_TARGETS) -> int:
    """Wrap the targeted linear layers of every block; freeze all else. Returns trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.h:
        for parent in (block.attn, block.mlp):
            for name, child in list(parent.named_children()):
                if name in targets and isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, rank, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model
