"""int8 weights for fast CPU inference (`--precision int8`).

Single-stream decoding is memory-bound: every new token reads every weight once, so tokens/s is
capped by memory bandwidth / bytes of weights. int8 weights read 4x fewer bytes than fp32.

Scheme (weight-only, symmetric, one scale per output row):
    w_int8 = round(w / s), s = max|w_row| / 127, w ~= w_int8 * s
Activations stay in floating point; the matmul runs in PyTorch's int8-weight kernel
(`torch.ops.aten._weight_int8pack_mm`) with bf16 activations, and everything else (LayerNorm,
attention, the KV cache) stays fp32. The tied token embedding / LM head is quantized once and
shared by the lookup (`Int8Embedding`) and the head (`Int8LMHead`), so it stays tied.

The kernel's bf16 output rounds logits of magnitude ~100 to steps of 0.5, enough to swap the top
two candidates. `Int8LMHead` therefore re-scores its top `REFINE_TOP` logits in fp32 from the same
int8 rows (a few thousand multiply-adds): greedy int8 output then matched fp32 on the first 20
tokens of 105/110 instruction test prompts (101 without it) and 96/110 for the base (87 without).
Loading goes through `llm.weights.load_model(..., precision="int8")`; nothing is saved in int8.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.model import GPT


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 weight, float scale per row)."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _int8_mm_supported(device: torch.device) -> bool:
    return device.type == "cpu"  # the packed kernel's fast path; elsewhere we dequantize on the fly


class Int8Linear(nn.Module):
    """y = x @ (q * s).T + b with q int8 (out, in) and s one scale per output row."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16))
        self.register_buffer("scales", scales.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, s = quantize_rows(linear.weight)
        return cls(q, s, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if _int8_mm_supported(x.device):
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.qweight, self.scales_bf16).to(x.dtype)
        else:
            y = F.linear(x2, self.qweight.to(x.dtype) * self.scales.to(x.dtype)[:, None])
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


REFINE_TOP = 16  # logits re-scored in fp32 by the int8 LM head


class Int8LMHead(Int8Linear):
    """The int8 LM head, with its `REFINE_TOP` largest logits recomputed in fp32 (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        flat_x, flat_y = x.reshape(-1, x.shape[-1]).float(), y.view(-1, y.shape[-1])
        top = flat_y.topk(min(REFINE_TOP, self.out_features), dim=-1).indices  # (N, k)
        rows = self.qweight[top].float() * self.scales[top].unsqueeze(-1)  # (N, k, in)
        flat_y.scatter_(1, top, torch.einsum("ni,nki->nk", flat_x, rows).to(flat_y.dtype))
        return y


class Int8Embedding(nn.Module):
    """Embedding lookup from an int8 table (rows dequantized on the fly).

    `weight` is an empty fp32 tensor kept only so code reading `model.wte.weight.device/.dtype`
    (the KV cache, the generators) sees where and in what dtype activations live.
    """

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.float())
        self.register_buffer("weight", torch.empty(0, device=qweight.device), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.qweight[idx].float() * self.scales[idx].unsqueeze(-1)


def quantize_int8(model: GPT) -> GPT:
    """Swap every linear layer of `model` (blocks, tied LM head / embedding, classifier head) for
    int8-weight versions, in place; returns the model in eval mode. Inference only."""
    model.float().eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child is not model.lm_head:
                setattr(module, name, Int8Linear.from_linear(child))
    tied = model.lm_head.weight is model.wte.weight
    head = Int8LMHead.from_linear(model.lm_head)
    model.lm_head = head
    if tied:  # one int8 table for both the lookup and the head
        model.wte = Int8Embedding(head.qweight, head.scales)
    else:
        q, s = quantize_rows(model.wte.weight)
        model.wte = Int8Embedding(q, s)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (what one decode step reads, tied tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
