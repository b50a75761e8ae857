"""The GPT-2 transformer, from scratch.

Read top to bottom: KVCache, CausalSelfAttention, MLP, Block, GPT (language model), GPTClassifier.
Linear weights are stored PyTorch-style (out, in); `llm.weights` transposes Hugging Face's Conv1D
(in, out) tensors on load.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.config import GPTConfig


class KVCache:
    """Keys and values of every layer, allocated once for the whole generation.

    Decoding writes each new position in place instead of concatenating, so a step costs one
    model call and no reallocation. `pos` is the number of positions already filled.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > config.n_positions:
            raise ValueError(f"KV cache of {max_len} positions exceeds the context length {config.n_positions}")
        shape = (batch_size, config.n_head, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H, t, D) for `layer`; return all keys and values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache is full ({self.max_len} positions)")
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v (with bias, as GPT-2)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, layer: int, cache: KVCache | None, mask: torch.Tensor | None, is_causal: bool):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # One fused kernel (flash / memory-efficient / math, whichever fits the device).
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2 uses the tanh approximation of GELU ("gelu_new"); "gelu" is the exact erf form.
        self.approximate = "none" if config.activation_function == "gelu" else "tanh"

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, layer, cache, mask, is_causal):
        x = x + self.attn(self.ln_1(x), layer, cache, mask, is_causal)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 language model: token + position embeddings, blocks, final LayerNorm, tied LM head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def hidden_states(self, idx, cache=None, attention_mask=None, position_ids=None):
        """Final-LayerNorm hidden states (B, T, C) for token ids `idx` (B, T).

        `attention_mask` (B, past + T) is 1 for real tokens and 0 for padding (left padding for
        generation, right padding for classification). With a cache, `idx` holds only new tokens.
        """
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        total = past + T
        if total > self.config.n_positions:
            raise ValueError(f"sequence of {total} tokens exceeds the context length {self.config.n_positions}")
        if position_ids is None:
            if attention_mask is not None:  # padding does not use up positions
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:total]
            else:
                position_ids = torch.arange(past, total, device=idx.device).unsqueeze(0)
        mask, is_causal = self._attention_mask(attention_mask, past, T, idx.device)
        x = self.transform(idx, position_ids, cache, mask, is_causal)
        if cache is not None:
            cache.pos = total
        return x

    def transform(self, idx, position_ids, cache, mask, is_causal: bool):
        """Embeddings -> blocks -> final LayerNorm, with the caller's positions, cache and mask.

        The one loop every path runs: `hidden_states` derives positions and mask from padding; the
        serving engine (`llm.serving.engine`) passes its own slot cache and per-row positions/masks.
        A cache only needs `update(layer, k, v) -> (keys, values)`.
        """
        x = self.drop(self.wte(idx) + self.wpe(position_ids))
        for i, block in enumerate(self.h):
            x = block(x, i, cache, mask, is_causal)
        return self.ln_f(x)

    @staticmethod
    def _attention_mask(attention_mask, past: int, T: int, device):
        """Returns (boolean mask or None, is_causal) for scaled_dot_product_attention."""
        if attention_mask is None:
            if past == 0:
                return None, T > 1  # plain causal attention: the fused kernel's fast path
            if T == 1:
                return None, False  # one new token may see every cached position
        total = past + T
        rows = torch.arange(past, total, device=device).unsqueeze(1)
        cols = torch.arange(total, device=device).unsqueeze(0)
        mask = cols <= rows  # (T, total) causal
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :total]
            # A padding query would otherwise see nothing and turn into NaN; let it see itself.
            mask = mask | (cols == rows)
        return mask, False

    def forward(self, idx, cache=None, attention_mask=None, position_ids=None, last_only: bool = False):
        """Logits (B, T, vocab), or (B, 1, vocab) with `last_only` (all generation needs)."""
        x = self.hidden_states(idx, cache, attention_mask, position_ids)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)


class GPTClassifier(GPT):
    """GPT-2 with a classification head on the last real (non-padding) token.

    Under causal attention only the last token has seen the whole message, so it carries the
    summary. Inputs are right-padded; `attention_mask` marks the real tokens.
    """

    def __init__(self, config: GPTConfig, num_classes: int):
        super().__init__(config)
        self.num_classes = num_classes
        self.score = nn.Linear(config.n_embd, num_classes)

    def forward(self, idx, attention_mask=None):
        # Right padding comes after every real token, so causal attention already keeps real
        # tokens from seeing it: the plain causal fast path is exact here.
        x = self.hidden_states(idx)
        if attention_mask is None:
            last = x[:, -1]
        else:
            lengths = attention_mask.long().sum(-1).clamp(min=1)
            last = x[torch.arange(x.size(0), device=x.device), lengths - 1]
        return self.score(last)
