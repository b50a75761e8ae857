"""Model shape: a dataclass plus the named GPT-2 presets.

Field names follow Hugging Face's `GPT2Config` so a checkpoint's `config.json` maps onto it directly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu")


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024  # the context length
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"  # GPT-2's tanh approximation of GELU
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"activation_function {self.activation_function!r} is not supported; "
                f"use one of {', '.join(SUPPORTED_ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Build from a Hugging Face `config.json` or our own; unknown keys are ignored."""
        d = dict(d)
        if "n_positions" not in d and "n_ctx" in d:
            d["n_positions"] = d["n_ctx"]
        for hf_key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if "dropout" not in d and hf_key in d:
                d["dropout"] = d[hf_key]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


def preset(name: str) -> GPTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or pass a checkpoint directory") from None
