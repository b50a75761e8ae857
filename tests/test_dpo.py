"""Preference tuning (finetune/dpo.py) on tiny models, through the shared loop (finetune/loop.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY
from finetune import dpo
from llm.checkpoint import save_checkpoint
from llm.instruct import IGNORE_INDEX, InstructionModel
from llm.model import GPT
from llm.prompt import template_metadata


def test_the_dpo_loss_matches_a_hand_computed_value():
    pi_c, pi_r = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    ref_c, ref_r = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    loss, chosen, rejected = dpo.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    # pair 1: (−1 − −3) − (−1.5 − −2) = 2 − 0.5 = 1.5; pair 2: (−2 − −1.5) − (−2 − −2) = −0.5
    expected = [-math.log(1 / (1 + math.exp(-0.1 * 1.5))), -math.log(1 / (1 + math.exp(0.1 * 0.5)))]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert chosen.tolist() == [0.5, 0.0] and rejected.tolist() == [-1.0, 0.5]


def test_sequence_logprobs_is_the_mean_over_the_response_tokens(tiny_model):
    x = torch.tensor([[5, 6, 7, 8, 9]])
    y = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 8, 9, IGNORE_INDEX]])  # prompt and padding masked
    with torch.no_grad():
        lp = torch.log_softmax(tiny_model(x).float(), -1)[0]
        expected = (lp[2, 8] + lp[3, 9]) / 2
        assert dpo.sequence_logprobs(tiny_model, x, y).item() == pytest.approx(expected.item(), abs=1e-5)


def _records(n):
    return [{"instruction": f"Reply to message {i}.", "input": "", "output": "Thank you, that is kind.",
             "chosen": "Thank you, that is kind.", "rejected": "Whatever, go away."} for i in range(n)]


@pytest.fixture
def sft_checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPT(TINY).eval(), tmp_path / "sft", metadata={"prompt_template": template_metadata()})


def _train(tmp_path, sft_checkpoint, *extra):
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(_records(40)))  # the book's split: 34 train, 4 test, 2 validation
    args = dpo.build_parser().parse_args(["train", "--base", str(sft_checkpoint), "--data", str(data), "--device", "cpu",
                                          "--out", str(tmp_path / "dpo"), "--lr", "3e-3", "--epochs", "3",
                                          "--eval-every", "3", "--batch-size", "4", "--beta", "0.5", *extra])
    return dpo.train(args)


def test_the_reward_margin_grows_and_the_result_is_an_instruction_checkpoint(tmp_path, sft_checkpoint, tokenizer):
    meta = _train(tmp_path, sft_checkpoint)
    history = json.loads((tmp_path / "dpo/history.json").read_text())
    assert history["val_reward_margin"][0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert meta["best"]["val_reward_margin"] > 0.5 and history["val_loss"][-1] < history["val_loss"][0]
    assert meta["preference_tuned"]["method"] == "dpo" and meta["preference_tuned"]["from"] == str(sft_checkpoint)
    assert "conversations" in meta  # carried from the base: a conversation-trained base stays one
    for png in ("loss.png", "reward_margin.png", "rewards.png"):
        assert (tmp_path / "dpo" / png).stat().st_size > 1000
    InstructionModel.load(tmp_path / "dpo", device="cpu", bpe_dir=None)  # the app's loader takes it


def test_a_lora_dpo_run_saves_merged_weights(tmp_path, sft_checkpoint, tokenizer):
    from safetensors import safe_open
    _train(tmp_path, sft_checkpoint, "--lora-rank", "4", "--lora-alpha", "8")
    tensors = {}
    for name, path in (("dpo", tmp_path / "dpo/model.safetensors"), ("sft", sft_checkpoint / "model.safetensors")):
        with safe_open(str(path), "pt") as f:
            assert not [k for k in f.keys() if "lora" in k.lower()]
            tensors[name] = f.get_tensor("h.0.attn.c_attn.weight")
    assert not torch.equal(tensors["dpo"], tensors["sft"])  # the adapters were merged into the weights


def test_bad_records_are_skipped_and_a_file_that_is_not_json_is_one_clear_error(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(_records(10) + [{"instruction": "x", "chosen": "", "rejected": "no"}, 7]))
    assert len(dpo.read_preferences(data)) == 10 and "skipped 2 record" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code = dpo.main(["train", "--base", str(tiny_checkpoint), "--data", str(bad), "--device", "cpu"])
    assert code == 2 and "not valid JSON" in capsys.readouterr().err


def test_the_nll_weight_adds_the_chosen_answers_token_nll(tiny_model):
    pairs = [dpo.Pair([1, 2, 3, 4], [1, 2, 5, 6], 2), dpo.Pair([1, 7, 8], [1, 7, 9], 2)]
    reference = GPT(TINY).eval()
    same = dict(beta=0.1, batch_size=2, grad_accum=1, eot_id=0, max_length=16, device="cpu", rng=None)
    plain, mixed = dpo.DPOTrainer(reference, pairs, pairs, **same), dpo.DPOTrainer(reference, pairs, pairs, **same, nll_weight=0.5)
    with torch.no_grad():
        (lp, _, _), (lm, _, _) = plain._terms(tiny_model, pairs), mixed._terms(tiny_model, pairs)
        (xc, yc), _ = dpo.collate_pairs(pairs, 0, 16)
        nll = -dpo.sequence_logprobs(tiny_model, xc, yc)
    assert torch.allclose(lm, lp + 0.5 * nll, atol=1e-6)
