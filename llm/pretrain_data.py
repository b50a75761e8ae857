"""Pretraining data: plain text tokenized once into a uint16 memmap, then random contiguous blocks.

    cache = build_token_cache(files, cache_dir, tokenizer)   # tokenizes only when the files changed
    data = TokenData.open(cache_dir)                         # train / val memmaps
    x, y = data.batch("train", starts)                       # (B, T) inputs and next-token targets

Documents are separated by `<|endoftext|>` (when a file contains it) or else by blank lines; each
document is followed by the `<|endoftext|>` token so the model learns where texts end.

Sampling is stateless: the blocks of micro-batch `m` at optimizer step `s` are drawn from
`numpy.random.default_rng([seed, s, m])`. A resumed run therefore reads exactly the blocks the
uninterrupted run would have read (the data position is the step), and under DDP rank `r` with
`accum` micro-steps takes micro-batches `r*accum ... r*accum+accum-1`: the global batch of a step is
the same whether it is spread over ranks or over gradient-accumulation micro-steps.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from llm.tokenizer import ENDOFTEXT, Tokenizer

TOKENS_FILE = "tokens.bin"
META_FILE = "tokens.json"
_BLANK_LINES = re.compile(r"\n[ \t]*\n")
VAL_STREAM = 2**31 - 1  # the rng stream of the fixed validation blocks (never a training step)


def split_documents(text: str) -> list[str]:
    """Documents of one file: split on `<|endoftext|>` if present, else on blank lines."""
    parts = text.split(ENDOFTEXT) if ENDOFTEXT in text else _BLANK_LINES.split(text)
    return [p.strip() for p in parts if p.strip()]


def _fingerprint(files: Sequence[Path], val_fraction: float) -> str:
    h = hashlib.sha256(f"gpt2-bpe/v1 val={val_fraction}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _documents(files: Sequence[Path], bar: tqdm) -> Iterator[str]:
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        yield from split_documents(text)
        bar.update(f.stat().st_size)


def build_token_cache(files: Sequence[str | os.PathLike], cache_dir: str | os.PathLike, tokenizer: Tokenizer,
                      val_fraction: float = 0.01, batch_docs: int = 512, progress: bool = True) -> Path:
    """Tokenize `files` into `cache_dir/tokens.bin` (uint16), unless an up-to-date cache is there.

    The last `val_fraction` of the token stream is held out for validation. Returns the cache dir.
    """
    paths = [Path(f).expanduser() for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"training text not found: {', '.join(missing)}")
    if not 0 < val_fraction < 1:
        raise ValueError("val_fraction must be in (0, 1)")
    if tokenizer.vocab_size > 2**16:
        raise ValueError(f"vocabulary of {tokenizer.vocab_size} does not fit uint16")
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(paths, val_fraction)
    meta_path = out / META_FILE
    if meta_path.is_file() and (out / TOKENS_FILE).is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            return out
    tmp = out / (TOKENS_FILE + ".tmp")
    n_tokens = n_docs = 0
    total_bytes = sum(p.stat().st_size for p in paths)
    with open(tmp, "wb") as fh, tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
                                     disable=not progress) as bar:
        docs = _documents(paths, bar)
        while True:
            chunk = [d for _, d in zip(range(batch_docs), docs)]
            if not chunk:
                break
            for ids in tokenizer.encoding.encode_ordinary_batch(chunk):
                arr = np.array(ids + [tokenizer.eot_id], dtype=np.uint16)
                arr.tofile(fh)
                n_tokens += arr.size
            n_docs += len(chunk)
    n_val = max(1, int(n_tokens * val_fraction))
    meta = {"fingerprint": fingerprint, "files": [str(p) for p in paths], "documents": n_docs,
            "tokens": n_tokens, "train_tokens": n_tokens - n_val, "val_tokens": n_val, "dtype": "uint16"}
    os.replace(tmp, out / TOKENS_FILE)
    meta_tmp = meta_path.with_name(META_FILE + ".tmp")
    meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(meta_tmp, meta_path)
    return out


@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> "TokenData":
        d = Path(cache_dir)
        meta = json.loads((d / META_FILE).read_text())
        tokens = np.memmap(d / TOKENS_FILE, dtype=np.uint16, mode="r")
        n_train = meta["train_tokens"]
        return cls(tokens[:n_train], tokens[n_train:], meta)

    def check_fits(self, block_size: int) -> None:
        for name, arr in (("training", self.train), ("validation", self.val)):
            if len(arr) < block_size + 2:
                raise ValueError(
                    f"the {name} split has {len(arr)} tokens, fewer than one block of {block_size} + 1: "
                    "give more text, a shorter context, or a larger --val-fraction"
                )

    def batch(self, split: str, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train if split == "train" else self.val
        rows = np.stack([data[s:s + block_size + 1] for s in starts]).astype(np.int64)
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def block_starts(n_tokens: int, block_size: int, batch_size: int, seed: int, step: int, micro: int) -> np.ndarray:
    """Start offsets of the `batch_size` blocks of micro-batch `micro` at step `step` (see module doc)."""
    rng = np.random.default_rng([seed, step, micro])
    return rng.integers(0, n_tokens - block_size, size=batch_size)
