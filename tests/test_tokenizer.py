"""GPT-2 BPE through tiktoken, offline."""
from __future__ import annotations

import os
import shutil
import socket

import pytest
from hypothesis import given, settings, strategies as st

from llm import tokenizer as tok_mod
from llm.tokenizer import EOT_ID, TokenizerError, get_tokenizer


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tok_mod._load.cache_clear()
    yield
    tok_mod._load.cache_clear()


@pytest.fixture
def bpe_dir():
    d = os.environ.get("LLM_BPE_DIR")
    if not d:
        pytest.skip("set LLM_BPE_DIR to a folder with GPT-2's encoder.json + vocab.bpe")
    return d


def test_known_ids(tokenizer):
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.eot_id == 50256 and tokenizer.vocab_size == 50257


@pytest.mark.parametrize("text", ["naïve café", "🤖🎉 emoji", "日本語のテキスト", "Ünïcödé\u200b zero-width", "tabs\tand\nnewlines"])
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_user_text_cannot_inject_the_special_token(tokenizer):
    assert tokenizer.eot_id not in tokenizer.encode("<|endoftext|>")
    assert tokenizer.encode_with_eot("a<|endoftext|>b") == [64, 50256, 65]


def test_offline_from_bpe_files(no_network, bpe_dir, tmp_path):
    # a fresh folder holding only the two files, as a user would copy them
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(bpe_dir, name), tmp_path / name)
    t = get_tokenizer(tmp_path)
    assert t.encode("Hello, world") == [15496, 11, 995]


def test_missing_files_name_the_fix(tmp_path):
    tok_mod._load.cache_clear()
    with pytest.raises(TokenizerError, match="encoder.json"):
        get_tokenizer(tmp_path)


def test_no_files_no_network_says_what_to_do(no_network, monkeypatch, tmp_path):
    monkeypatch.delenv("LLM_BPE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    with pytest.raises(TokenizerError, match="LLM_BPE_DIR"):
        get_tokenizer()


# ----------------------------------------------------------------------------- the stream decoder (properties)
def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_stream_pieces_rebuild_the_text_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text)
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    # A piece that cut a character in two would carry U+FFFD (or a lone surrogate) the text does not have.
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces), pieces
    assert not any(_has_lone_surrogate(p) for p in pieces)
    assert "".join(tokenizer.stream_decoder().feed(ids)) == text


# Token ids 0-255 are single bytes, so half characters (and bytes no UTF-8 allows) come often.
token_ids = st.lists(st.one_of(st.integers(0, 255), st.integers(0, EOT_ID)), max_size=48)


@settings(max_examples=100, deadline=None)
@given(ids=token_ids)
def test_stream_of_any_ids_equals_decoding_their_bytes_at_once(tokenizer, ids):
    decoder = tokenizer.stream_decoder()
    streamed = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert streamed == tokenizer.decode_bytes(ids).decode("utf-8", errors="replace")
    assert not _has_lone_surrogate(streamed)
