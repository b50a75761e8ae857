"""Instruction mode: data, collate masking, template identity, save/load, the CLI, stopping, metrics."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from finetune.instruct import conversation_examples, main
from finetune.instruct_eval import exact_match, rouge_l_f1, rouge_tokens
from llm.checkpoint import CheckpointError, read_config, save_checkpoint
from llm.generate import GenerationSettings
from llm.instruct import (IGNORE_INDEX, Example, InstructionModel, collate, encode_example, read_entries,
                          split_entries, turn_ids)
from llm.model import GPT
from llm.prompt import format_prompt, template_metadata

EOT = 50256
ENTRIES = [{"instruction": f"Say the number {i}.", "input": "" if i % 2 else f"n={i}", "output": f"The number is {i}."}
           for i in range(40)]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ENTRIES))
    return path


# --- data ------------------------------------------------------------------------------------

def test_invalid_entries_are_reported_and_skipped(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([ENTRIES[0], {"instruction": 3, "output": "x"}, "nope",
                                {"instruction": "a", "output": ""}, {"instruction": "b", "output": "c"}]))
    good, problems = read_entries(path)
    assert good == [ENTRIES[0], {"instruction": "b", "input": "", "output": "c"}]
    assert len(problems) == 3 and problems[0].startswith("entry 1: instruction")


def test_split_in_file_order_like_the_book():
    entries = [{"instruction": str(i), "input": "", "output": "o"} for i in range(1100)]
    s = split_entries(entries)
    assert [len(s[k]) for k in ("train", "test", "val")] == [935, 110, 55]
    assert s["train"][0]["instruction"] == "0" and s["test"][0]["instruction"] == "935" and s["val"][0]["instruction"] == "1045"


# --- collate ---------------------------------------------------------------------------------

def test_collate_masks_padding_after_first_endoftext():
    x, y = collate([Example([1, 2, 3], 2), Example([4, 5], 1)], EOT)
    assert x.tolist() == [[1, 2, 3], [4, 5, EOT]]
    assert y.tolist() == [[2, 3, EOT], [5, EOT, IGNORE_INDEX]]


def test_collate_masks_prompt_and_caps_length():
    x, y = collate([Example([1, 2, 3, 4, 5], 3), Example([6, 7], 1)], EOT, mask_prompt=True)
    # targets of prompt tokens 2 and 3 are ignored; the first response token (4) is learned
    assert y.tolist() == [[-100, -100, 4, 5, EOT], [7, EOT, -100, -100, -100]]
    assert x.tolist() == [[1, 2, 3, 4, 5], [6, 7, EOT, EOT, EOT]]
    x, y = collate([Example([1, 2, 3, 4, 5], 3)], EOT, mask_prompt=True, max_length=3)
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[-100, -100, 4]]


def test_encode_example_uses_the_template(tokenizer):
    e = encode_example(tokenizer, ENTRIES[0])
    assert tokenizer.decode(e.ids[:e.prompt_len]) == format_prompt("Say the number 0.", "n=0")
    assert tokenizer.decode(e.ids[e.prompt_len:]) == "The number is 0."


# --- train, save/load, template identity ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint, tokenizer):
    d = tmp_path_factory.mktemp("instruct")
    data = d / "data.json"
    data.write_text(json.dumps(ENTRIES))
    out = d / "ckpt"
    rc = main(["train", "--base", str(tiny_checkpoint), "--data", str(data), "--out", str(out), "--epochs", "1",
               "--batch-size", "8", "--lr", "1e-3", "--eval-every", "2", "--device", "cpu"])
    assert rc == 0
    return out, data


def test_checkpoint_records_the_template_used_in_training_and_inference(trained, tokenizer):
    out, _ = trained
    cfg = read_config(out)
    assert cfg["metadata"]["prompt_template"] == template_metadata()
    im = InstructionModel.load(out, device="cpu")
    entry = ENTRIES[3]
    assert im.prompt_ids(entry["instruction"], entry["input"]) == encode_example(tokenizer, entry).ids[:encode_example(tokenizer, entry).prompt_len]
    assert (out / "loss.png").stat().st_size > 0 and json.loads((out / "history.json").read_text())["val_loss"]


def test_load_refuses_a_different_template(trained, tmp_path):
    out, _ = trained
    im = InstructionModel.load(out, device="cpu")
    other = {**template_metadata(), "response_header": "\n\n### Answer:\n", "name": "other"}
    save_checkpoint(im.model, tmp_path / "x", metadata={"prompt_template": other})
    with pytest.raises(CheckpointError, match="another prompt template"):
        InstructionModel.load(tmp_path / "x", device="cpu")


def test_missing_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_INSTRUCT_CHECKPOINT", str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="python -m finetune.instruct train"):
        InstructionModel.load()


def test_generate_cli_json_and_test_set(trained, capsys, tmp_path):
    out, data = trained
    assert main(["generate", "--checkpoint", str(out), "--instruction", "Say the number 7.", "--json",
                 "--max-new-tokens", "12", "--device", "cpu"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["instruction"] == "Say the number 7." and isinstance(reply["response"], str)
    assert "###" not in reply["response"] and reply["stopped_by"] in ("eot", "length", "stop_string")
    responses = tmp_path / "r.json"
    assert main(["generate", "--checkpoint", str(out), "--data", str(data), "--test-set", "--responses", str(responses),
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    rows = json.loads(responses.read_text())
    assert [r["instruction"] for r in rows] == [e["instruction"] for e in split_entries(ENTRIES)["test"]]
    assert all(set(r) == {"instruction", "input", "output", "model_response"} for r in rows)


def test_bf16_autocast_and_length_grouped_batches_train(tiny_checkpoint, data_file, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["train", "--base", str(tiny_checkpoint), "--data", str(data_file), "--out", str(out), "--epochs", "1",
                 "--batch-size", "4", "--lr", "1e-3", "--eval-every", "4", "--dtype", "bf16", "--group-by-length",
                 "--device", "cpu"]) == 0
    assert "autocast torch.bfloat16, batches grouped by length" in capsys.readouterr().err
    cfg = read_config(out)
    assert cfg["metadata"]["train_config"]["dtype"] == "bf16" and cfg["metadata"]["steps"] == 9
    history = json.loads((out / "history.json").read_text())
    assert min(history["val_loss"][1:]) < history["val_loss"][0], history["val_loss"]
    assert all(t.dtype == torch.float32 for t in InstructionModel.load(out, device="cpu").model.state_dict().values())


# --- stopping ---------------------------------------------------------------------------------

class Scripted(GPT):
    """A GPT that always predicts the next token of a fixed script (to test stopping)."""

    def __init__(self, config, script):
        super().__init__(config)
        self.script, self.calls = script, 0

    def forward(self, idx, cache=None, attention_mask=None, position_ids=None, last_only=False):
        if cache is not None:
            cache.pos += idx.shape[1]
        logits = torch.zeros(idx.shape[0], 1, self.config.vocab_size)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_stream_never_echoes_template_headers(tokenizer, tiny_model):
    script = tokenizer.encode("Blue.\n\n### Instruction:\nName another color.") + [EOT]
    im = InstructionModel(Scripted(tiny_model.config, script).eval(), tokenizer)
    assert im.respond("Name a color.", settings=GenerationSettings(max_new_tokens=40)) == "Blue."
    im.model.calls = 0
    assert im.respond_batch([{"instruction": "Name a color."}], GenerationSettings(max_new_tokens=40)) == ["Blue."]


def test_stream_stops_at_endoftext(tokenizer, tiny_model):
    script = tokenizer.encode("Red") + [EOT] + tokenizer.encode(" and more")
    im = InstructionModel(Scripted(tiny_model.config, script).eval(), tokenizer)
    assert "".join(im.stream("Name a color.")) == "Red"


def test_history_is_carried_oldest_dropped_first(tokenizer, tiny_model):
    im = InstructionModel(tiny_model, tokenizer)
    hist = [("first " * 20, "a"), ("second", "b")]
    full = im.prompt_ids("third", history=hist, max_new_tokens=10)
    assert tokenizer.decode(full).startswith(format_prompt("first " * 20) + "a<|endoftext|>")
    short = im.prompt_ids("third", history=hist, max_new_tokens=60)  # tiny context 128: the long first turn no longer fits
    text = tokenizer.decode(short)
    assert "first" not in text and text.startswith(format_prompt("second") + "b<|endoftext|>")
    assert text.endswith(format_prompt("third"))


# --- metrics ----------------------------------------------------------------------------------

def test_rouge_l_f1_and_exact_match():
    assert rouge_tokens("Hello, World!") == ["hello", ",", "world", "!"]
    assert rouge_l_f1("the cat sat", "The cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge_l_f1("a b c d", "a x c y d") == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert rouge_l_f1("dog", "cat") == 0.0 and rouge_l_f1("Same.", "same .") == 1.0
    assert exact_match(" The answer  is 4. ", "The answer is 4.") and not exact_match("4", "four")


# --- real data --------------------------------------------------------------------------------

@pytest.mark.shared
def test_short_finetune_on_real_data_lowers_validation_loss(base_model_dir, tokenizer, tmp_path):
    if not os.path.isfile(os.environ.get("LLM_INSTRUCTION_DATA", "")):
        pytest.skip("no instruction data: set LLM_INSTRUCTION_DATA")
    out = tmp_path / "ckpt"
    assert main(["train", "--base", str(base_model_dir), "--out", str(out), "--limit", "24", "--val-limit", "8",
                 "--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "--eval-every", "1", "--device", "cpu"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["val_loss"][-1] < history["val_loss"][0] - 0.2, history["val_loss"]


def test_conversation_examples_put_earlier_exchanges_first_and_train_on_the_last_response_only(tokenizer):
    items = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]
    plain = conversation_examples(tokenizer, items, 0.0, 2, 256, random.Random(1))
    assert plain == [encode_example(tokenizer, e) for e in items]  # fraction 0: the single-exchange recipe
    mixed = conversation_examples(tokenizer, items, 1.0, 2, 256, random.Random(1))
    for e, ex in zip(items, mixed):
        answer = tokenizer.encode(e["output"])
        assert ex.ids[-len(answer):] == answer and ex.ids[ex.prompt_len:] == answer  # only the last response counts
        assert ex.prompt_len > encode_example(tokenizer, e).prompt_len  # earlier turns came first
    first_turn = turn_ids(tokenizer, "Question 3?", "Answer 3.")
    assert any(ex.ids[:len(first_turn)] == first_turn for ex in mixed)  # the app's follow-up layout (InstructionModel.prompt_ids)
    short = conversation_examples(tokenizer, items, 1.0, 2, 40, random.Random(1))
    assert all(len(ex.ids) <= 40 or ex.prompt_len == encode_example(tokenizer, e).prompt_len for e, ex in zip(items, short))


def test_conversation_examples_end_with_duplicate_entries(tokenizer):
    """Duplicates are one exchange: fewer distinct others than turns asked for must not loop forever."""
    items = [{"instruction": "a", "input": "", "output": "x"}] + [{"instruction": "b", "input": "", "output": "y"}] * 2
    examples = conversation_examples(tokenizer, items, 1.0, 2, 256, random.Random(0))
    b_prompt = encode_example(tokenizer, items[1]).prompt_len
    assert len(examples) == 3 and examples[1].prompt_len > b_prompt  # b is preceded by a, never by its own copy

