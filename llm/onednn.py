"""fp32 linear layers through oneDNN on the CPU, for inference (`load_model` applies it).

`nn.Linear` on a CPU calls MKL's sgemm. For the few rows of decoding (1 to 32 sequences x 1 token)
and for prefill, oneDNN's matmul (the kernel torch.compile's CPU backend uses) was 1.6-2.7x faster on
this project's 2-core AVX-512 machine: gpt2-mini's LM head (512 x 50,257) 6.4 -> 2.3 ms for one row and
12.4 -> 4.6 ms for 16; whole decode steps 15.7 -> 9.2 ms (batch 1) and 36 -> 23 ms (batch 16). It is
the same fp32 arithmetic: errors against float64 of a few 1e-6, like MKL's.

Only the forward kernel changes, in place, so tied weights stay tied and checkpoints are untouched.
Anything that needs gradients (training) keeps `F.linear`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or (torch.is_grad_enabled() and
                                                                  (x.requires_grad or self.weight.requires_grad)):
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


def use_onednn(model: nn.Module) -> nn.Module:
    """Run every plain fp32 `nn.Linear` of `model` (on the CPU) through oneDNN; a no-op elsewhere."""
    if available():
        for module in model.modules():
            if type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
                module.__class__ = OneDNNLinear
    return model
