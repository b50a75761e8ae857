"""int8 weights for fast CPU inference (`--precision int8`).

Single-stream decoding is memory-bound: every new token reads every weight once, so tokens/s is
capped by memory bandwidth / bytes of weights. int8 weights read 4x fewer bytes than fp32.

Scheme (symmetric, one scale per output row):
    w_int8 = round(w / s), s = max|w_row| / 127, w ~= w_int8 * s
Two kernels, picked by the number of rows (tokens) in the call, since each wins at one end:
- fewer than `INT8_ROWS_FROM` rows (one stream decoding: memory-bound): PyTorch's int8-weight kernel
  (`torch.ops.aten._weight_int8pack_mm`) with bf16 activations;
- more (batched decoding, prefill: compute-bound): the activations are quantized too, ONE SCALE PER ROW
  (x_int8 = round(x / a), a = max|x_row| / 127), the product runs in integers (`torch._int_mm`, int8 x int8
  -> int32, oneDNN's VNNI kernels), then y = acc * a_row * s_col. Integer sums are exact and each row has its
  own scale, so a row's output never depends on the other rows (fbgemm's dynamic quantization, by contrast,
  shares one activation scale per batch). Same test loss as weight-only int8 (2.1174 vs 2.1159; fp32 2.1168);
  numbers in `benchmarks/results/int8_kernels.md`. The serving engine uses it at every batch size
  (`int8_rows_always`), so that no answer depends on the batch it was decoded in.
Everything else (LayerNorm, attention, the KV cache) stays fp32. The tied token embedding / LM head is quantized once and
shared by the lookup (`Int8Embedding`) and the head (`Int8LMHead`), so it stays tied.

The int8 kernels' rounding (bf16 output, or int8 activations) moves logits of magnitude ~100 by up to ~0.5, enough
to swap the top two candidates. `Int8LMHead` therefore re-scores its top `REFINE_TOP` logits in fp32 from the same
int8 rows (a few thousand multiply-adds): greedy int8 output then matches fp32 on the first 20 tokens of 103/110
instruction test prompts (94/110 with int8 activations at every batch size, as the engine runs it).
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
    return device.type == "cpu"  # the packed kernels' fast path; elsewhere we dequantize on the fly


# Rows (tokens in one call) from which int8 activations beat the int8-weight kernel. Measured per ISA with
# benchmarks/int8_kernels.py on this project's CPU: decoding a batch of 8 is 1.03x (AVX-512) and 1.24x (AVX2) as
# fast with them, 16 rows 1.13x and 1.54x, 32 rows 1.35x and 1.77x; at 4 rows AVX-512 loses (0.74x). Same crossover
# under both, so one number.
INT8_ROWS_FROM = 8


def int8_rows_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, in) float @ (qweight * scales).T with x quantized to int8 per row; fp32 (M, out)."""
    a = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    acc = torch._int_mm(torch.round(x.float() / a).to(torch.int8), qweight.t())
    return acc * a * scales


class Int8Linear(nn.Module):
    """y = x @ (q * s).T + b with q int8 (out, in) and s one scale per output row."""

    rows_from: int | None = None  # rows from which int8 activations run; None = INT8_ROWS_FROM (see int8_rows_always)

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
        if _int8_mm_supported(x.device) and x2.shape[0] >= (self.rows_from or INT8_ROWS_FROM):
            y = int8_rows_matmul(x2, self.qweight, self.scales).to(x.dtype)
        elif _int8_mm_supported(x.device):
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


def int8_rows_always(model: nn.Module) -> bool:
    """Run every int8 layer of `model` with int8 activations at any number of rows, so that each row's output is
    exactly the same whatever else is in the batch, at the cost of the one-row speed of the weight-only kernel
    (the serving engine does this: a request's answer never depends on its neighbours). True if any layer is int8."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    for layer in layers:
        layer.rows_from = 1
    return bool(layers)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (what one decode step reads, tied tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
