"""GPT-2 byte-pair encoding through tiktoken, usable offline.

Where the BPE files come from, in order:
  1. `bpe_dir` (the `--bpe-dir` flag) or the `LLM_BPE_DIR` environment variable: a folder holding
     OpenAI's `encoder.json` and `vocab.bpe`. They are checked against their known sha256.
  2. tiktoken's own cache or download (`TIKTOKEN_CACHE_DIR` is honoured by tiktoken itself).
"""
from __future__ import annotations

import codecs
import functools
import os
from pathlib import Path
from typing import Iterable, Iterator

import tiktoken

BPE_DIR_ENV = "LLM_BPE_DIR"
ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerError(RuntimeError):
    pass


class Tokenizer:
    """Thin wrapper over a tiktoken Encoding with the one special token GPT-2 knows."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.encoding = encoding
        self.eot_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        # `<|endoftext|>` typed by a user stays plain text: only our code inserts the real token.
        return self.encoding.encode_ordinary(text)

    def encode_with_eot(self, text: str) -> list[int]:
        """Encode text that may legitimately contain `<|endoftext|>` separators (training data)."""
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns token ids into text pieces one token at a time, never splitting a UTF-8 character.

    GPT-2 tokens are byte sequences; an emoji can span two tokens. An incremental UTF-8 decoder
    holds back the incomplete bytes until the rest arrive.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.encoding.decode_single_token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

    def feed(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            piece = self.push(i)
            if piece:
                yield piece
        tail = self.flush()
        if tail:
            yield tail


def _from_bpe_dir(bpe_dir: Path) -> tiktoken.Encoding:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab, encoder = bpe_dir / "vocab.bpe", bpe_dir / "encoder.json"
    missing = [p.name for p in (vocab, encoder) if not p.is_file()]
    if missing:
        raise TokenizerError(
            f"BPE folder {bpe_dir} lacks {', '.join(missing)}; it must hold OpenAI's GPT-2 "
            "`encoder.json` and `vocab.bpe` (point --bpe-dir / LLM_BPE_DIR at such a folder)."
        )
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            str(vocab), str(encoder), vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
        )
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise TokenizerError(f"BPE files in {bpe_dir} are not GPT-2's (checksum mismatch): {e}") from e
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_ID}, explicit_n_vocab=50257,
    )


@functools.lru_cache(maxsize=4)
def _load(bpe_dir: str | None) -> Tokenizer:
    if bpe_dir:
        return Tokenizer(_from_bpe_dir(Path(bpe_dir).expanduser()))
    try:
        return Tokenizer(tiktoken.get_encoding("gpt2"))
    except Exception as e:  # tiktoken raises requests' errors when it cannot download
        raise TokenizerError(
            "Could not load the GPT-2 tokenizer: tiktoken could not download its BPE files "
            f"({type(e).__name__}: {e}). Offline, point --bpe-dir or {BPE_DIR_ENV} at a folder with "
            "`encoder.json` and `vocab.bpe`, or set TIKTOKEN_CACHE_DIR to a filled tiktoken cache."
        ) from e


def get_tokenizer(bpe_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The GPT-2 tokenizer; loaded once per process and per source."""
    chosen = bpe_dir or os.environ.get(BPE_DIR_ENV) or None
    return _load(str(chosen) if chosen else None)
