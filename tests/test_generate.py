"""Generation: sampling controls, streaming text, stop conditions, batching, the CLI."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from llm.generate import (GenerationSettings, fit_prompt, generate, generate_batch, generate_ids, main,
                          sample_next, stream_text)

PROMPTS = [[464, 3290, 286], [40, 1101, 257, 1295, 351, 1811, 11, 290], [15496]]


def test_batched_left_padded_equals_one_by_one(tiny_model, tokenizer):
    s = GenerationSettings(max_new_tokens=25)
    batched = generate_batch(tiny_model, tokenizer, PROMPTS, s)
    for prompt, result in zip(PROMPTS, batched):
        alone = list(generate_ids(tiny_model, prompt, s, eot_id=tokenizer.eot_id))
        assert result.ids == alone


def test_seed_makes_sampling_reproducible(tiny_model):
    s = GenerationSettings(max_new_tokens=20, temperature=1.0, top_k=50, seed=7)
    a = list(generate_ids(tiny_model, PROMPTS[0], s, eot_id=-1))
    b = list(generate_ids(tiny_model, PROMPTS[0], s, eot_id=-1))
    c = list(generate_ids(tiny_model, PROMPTS[0], GenerationSettings(max_new_tokens=20, temperature=1.0, top_k=50, seed=8), eot_id=-1))
    assert a == b and a != c


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, GenerationSettings(temperature=5.0, top_k=2), gen)) for _ in range(200)}
    assert picks == {1, 2}
    picks = {int(sample_next(logits, GenerationSettings(temperature=1.0, top_p=0.01), gen)) for _ in range(50)}
    assert picks == {1}  # the top token alone already holds more than 1% of the mass
    assert int(sample_next(logits, GenerationSettings(temperature=0.0), gen)) == 1


def test_generation_stops_at_endoftext(tiny_model):
    first = next(generate_ids(tiny_model, PROMPTS[0], GenerationSettings(max_new_tokens=5), eot_id=-1))
    # declare the model's first greedy token to be <|endoftext|>: generation yields nothing
    assert list(generate_ids(tiny_model, PROMPTS[0], GenerationSettings(max_new_tokens=5), eot_id=first)) == []


def test_stream_never_splits_utf8_and_matches_decode(tiny_model, tokenizer):
    ids = tokenizer.encode("🤖 日本語 ok é")
    pieces = list(tokenizer.stream_decoder().feed(ids))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # a half character would decode to U+FFFD
    # the emoji spans two tokens: no piece is emitted for its first half
    assert len(pieces) < len(ids)
    result = generate(tiny_model, tokenizer, "Hello", GenerationSettings(max_new_tokens=30))
    assert result.text == tokenizer.decode(result.ids)


def test_stop_string_ends_generation_and_is_never_emitted(tiny_model, tokenizer):
    full = generate(tiny_model, tokenizer, "Hello", GenerationSettings(max_new_tokens=30)).text
    stop = full[10:14]
    assert len(stop) == 4
    pieces = list(stream_text(tiny_model, tokenizer, "Hello", GenerationSettings(max_new_tokens=30, stop_strings=[stop])))
    text = "".join(pieces)
    assert text == full[:full.find(stop)]
    [batched] = generate_batch(tiny_model, tokenizer, ["Hello"], GenerationSettings(max_new_tokens=30, stop_strings=[stop]))
    assert batched.text == text and batched.stopped_by == "stop_string"


def test_long_prompt_is_truncated_from_the_left_with_a_notice(tiny_model, tokenizer, caplog):
    context = tiny_model.config.n_positions
    ids = list(range(1000, 1000 + context + 50))
    kept, max_new, dropped = fit_prompt(ids, 20, context, tokenizer.eot_id)
    assert kept == ids[-(context - 20):] and max_new == 20 and dropped == len(ids) - (context - 20)
    # a huge max_new_tokens never costs the prompt: fewer new tokens first, down to a quarter of the context
    assert fit_prompt(ids[:30], 100_000, context, tokenizer.eot_id) == (ids[:30], context - 30, 0)
    kept, max_new, cut = fit_prompt(ids[:context - 5], 100_000, context, tokenizer.eot_id)
    assert max_new == context // 4 and kept == ids[:context - 5][cut:] and len(kept) + max_new == context
    # a batch keeps one answer length for every row: only the prompt is cut there
    kept, max_new, cut = fit_prompt(ids[:30], 100_000, context, tokenizer.eot_id, fewer_tokens_first=False)
    assert max_new == context - 1 and kept == ids[29:30] and cut == 29
    with caplog.at_level(logging.WARNING, logger="llm"):
        result = generate(tiny_model, tokenizer, ids, GenerationSettings(max_new_tokens=20))
    assert "truncated from the left" in caplog.text
    assert result.prompt_tokens_dropped == dropped and len(result.ids) == 20


def test_should_stop_cancels(tiny_model):
    calls = iter(range(100))
    out = list(generate_ids(tiny_model, PROMPTS[0], GenerationSettings(max_new_tokens=50), eot_id=-1,
                            should_stop=lambda: next(calls) >= 3))
    assert len(out) == 3


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0), dict(max_new_tokens=-5)])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


def test_cli_json(tiny_checkpoint, tokenizer, capsys):
    assert main(["--base", str(tiny_checkpoint), "--prompt", "Hello, world", "--max-new-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["completion_ids"]) == 8 and out["completion"] == tokenizer.decode(out["completion_ids"])


def test_cli_streams_and_greedy_is_deterministic(tiny_checkpoint, tokenizer, capsys):
    args = ["--base", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "6", "--temperature", "0"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first and first.strip()


def test_cli_unknown_base_says_what_to_pass(capsys):
    assert main(["--base", "gpt5", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "neither a preset" in err and "gpt2-medium" in err
