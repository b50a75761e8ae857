"""The from-scratch GPT-2 against Hugging Face `transformers` on the same weights."""
from __future__ import annotations

import pytest
import torch

from llm.generate import GenerationSettings, generate_ids
from llm.weights import load_model

transformers = pytest.importorskip("transformers")

PROMPT_IDS = [464, 3290, 286, 4881, 318, 257, 1295, 351, 1811, 11, 290, 340]  # any GPT-2 ids work


def _hf_random_dir(tmp_path):
    config = transformers.GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=256, vocab_size=50257)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors, Conv1D (in, out) layout
    return tmp_path, hf


def _hf_from_dir(path):
    return transformers.GPT2LMHeadModel.from_pretrained(path, dtype=torch.float32).eval()


def _assert_parity(ours, hf, n_new=30):
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        theirs = hf(ids).logits
        mine = ours(ids)
    assert mine.shape == theirs.shape
    assert torch.allclose(mine, theirs, atol=1e-4, rtol=0), (mine - theirs).abs().max()
    expected = hf.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=50256,
                           eos_token_id=None, min_new_tokens=n_new)[0, ids.size(1):].tolist()
    got = list(generate_ids(ours, PROMPT_IDS, GenerationSettings(max_new_tokens=n_new), eot_id=-1))
    assert got == expected


def test_random_config_matches_transformers(tmp_path):
    path, hf = _hf_random_dir(tmp_path)
    ours, _ = load_model(path)
    _assert_parity(ours, hf)


@pytest.mark.shared
def test_gpt2_mini_matches_transformers(base_model_dir):
    ours, _ = load_model(base_model_dir)
    _assert_parity(ours, _hf_from_dir(base_model_dir))


def test_tensor_names_without_prefix_and_with_lm_head(tmp_path):
    """Checkpoints saved from GPT2Model (no `transformer.` prefix) or with an explicit lm_head load too."""
    from safetensors.torch import load_file, save_file

    path, hf = _hf_random_dir(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    renamed = {k.removeprefix("transformer."): v.clone() for k, v in state.items()}
    renamed["lm_head.weight"] = state["transformer.wte.weight"].clone()
    renamed["h.0.attn.bias"] = torch.ones(1, 1, 256, 256)  # old-style mask buffer: ignored
    save_file(renamed, str(path / "model.safetensors"))
    ours, _ = load_model(path)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_kv_cache_matches_full_recompute(tiny_model):
    cached = list(generate_ids(tiny_model, PROMPT_IDS, GenerationSettings(max_new_tokens=40), eot_id=-1))
    uncached = list(generate_ids(tiny_model, PROMPT_IDS, GenerationSettings(max_new_tokens=40, use_cache=False), eot_id=-1))
    assert len(cached) == 40 and cached == uncached


def test_cached_logits_equal_full_forward(tiny_model):
    """Prefill in two chunks through the cache = one causal forward over the whole sequence."""
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        full = tiny_model(ids)
        cache = tiny_model.new_cache(1, ids.size(1))
        first = tiny_model(ids[:, :5], cache=cache)
        rest = tiny_model(ids[:, 5:], cache=cache)
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-5)


def test_classifier_reads_last_real_token(tiny_model):
    from llm.model import GPTClassifier

    torch.manual_seed(0)
    clf = GPTClassifier(tiny_model.config, num_classes=2).eval()
    short, long = [10, 20, 30], [10, 20, 30, 40, 50]
    batch = torch.tensor([short + [50256, 50256], long])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        padded = clf(batch, attention_mask=mask)
        alone = clf(torch.tensor([short]))
    assert torch.allclose(padded[0], alone[0], atol=1e-5)
    assert not torch.allclose(padded[0], padded[1])


def test_context_overflow_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="context length"):
        tiny_model(torch.zeros(1, tiny_model.config.n_positions + 1, dtype=torch.long))
