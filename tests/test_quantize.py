"""Inference precisions (fp32 / bf16 / int8): loading, closeness to fp32, generation, errors.

Speed and real-model quality are measured in benchmarks/generation.py; here a tiny random model.
"""
from __future__ import annotations

import pytest
import torch

from llm.checkpoint import save_checkpoint
from llm.config import GPTConfig
from llm.device import parse_dtype, resolve_precision
from llm.generate import GenerationSettings, generate_ids, stream_text
from llm.model import GPTClassifier
from llm.quantize import Int8Embedding, Int8Linear, quantize_rows, weight_bytes
from llm.weights import load_model

# int8 keeps one scale per output row, so each weight is off by at most scale/2 = max|w_row|/254;
# through a 2-layer tiny model the logits move by far less than 5% of their range.
INT8_REL_TOL = 0.05
BF16_REL_TOL = 0.05


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).float()


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def ids():
    return torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))


def test_quantize_rows_roundtrip():
    w = torch.randn(64, 32)
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (64,)
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-6


@pytest.mark.parametrize("precision,tol", [("int8", INT8_REL_TOL), ("bf16", BF16_REL_TOL)])
def test_precision_logits_close_to_fp32(tiny_checkpoint, ids, precision, tol):
    ref, _ = load_model(tiny_checkpoint, "cpu", "fp32")
    model, _ = load_model(tiny_checkpoint, "cpu", precision)
    err = _rel_err(_logits(model, ids), _logits(ref, ids))
    assert err < tol, f"{precision} logits differ from fp32 by {err:.3%} of their range"
    assert err > 0  # it really is a different precision


def test_int8_replaces_every_linear_and_keeps_tying(tiny_checkpoint):
    fp32, _ = load_model(tiny_checkpoint, "cpu", "fp32")
    model, _ = load_model(tiny_checkpoint, "cpu", "int8")
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.wte, Int8Embedding)
    assert model.wte.qweight is model.lm_head.qweight  # one int8 table for lookup and head
    assert model.wte.weight.dtype == torch.float32  # activations and KV cache stay fp32
    assert weight_bytes(model) < weight_bytes(fp32) / 3


def test_int8_via_env(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LLM_PRECISION", "int8")
    model, _ = load_model(tiny_checkpoint, "cpu", None)
    assert isinstance(model.lm_head, Int8Linear)


def test_int8_generation_runs_streams_and_cache_matches(tiny_checkpoint, tokenizer):
    model, _ = load_model(tiny_checkpoint, "cpu", "int8")
    prompt = tokenizer.encode("Hello there")
    s = GenerationSettings(max_new_tokens=12)
    with_cache = list(generate_ids(model, prompt, s, eot_id=-1))
    without = list(generate_ids(model, prompt, GenerationSettings(max_new_tokens=12, use_cache=False), eot_id=-1))
    assert len(with_cache) == 12 and with_cache == without
    pieces = list(stream_text(model, tokenizer, "Hello there", GenerationSettings(max_new_tokens=12, temperature=0.8, seed=0)))
    assert pieces and all(isinstance(p, str) for p in pieces)


def test_int8_classifier(tmp_path, ids):
    torch.manual_seed(0)
    clf = GPTClassifier(GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128), num_classes=2).eval()
    save_checkpoint(clf, tmp_path)
    ref, _ = load_model(tmp_path, "cpu", "fp32")
    model, _ = load_model(tmp_path, "cpu", "int8")
    assert isinstance(model.score, Int8Linear)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    with torch.inference_mode():
        a, b = model(ids, attention_mask=mask), ref(ids, attention_mask=mask)
    assert a.shape == (2, 2)
    assert _rel_err(a, b) < INT8_REL_TOL


def test_unknown_precision_is_a_clear_error(tiny_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match="unknown precision 'int4'.*fp32, bf16, fp16, int8"):
        load_model(tiny_checkpoint, "cpu", "int4")
    monkeypatch.setenv("LLM_PRECISION", "fp64")
    with pytest.raises(ValueError, match="LLM_PRECISION"):
        resolve_precision()
    assert parse_dtype("int8") == torch.float32


def test_int8_lm_head_rescores_its_top_logits_in_fp32():
    from llm.quantize import REFINE_TOP, Int8LMHead
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 500, bias=False)
    head = Int8LMHead.from_linear(linear)
    x = torch.randn(3, 2, 64) * 20  # large activations: bf16 rounding of the kernel's output is visible
    y = head(x)
    exact = x @ (head.qweight.float() * head.scales[:, None]).T
    top = exact.topk(REFINE_TOP, dim=-1).indices
    assert torch.allclose(y.gather(-1, top), exact.gather(-1, top), atol=1e-3)
    assert torch.equal(y.argmax(-1), exact.argmax(-1))


def test_onednn_linear_is_fp32_exact_and_trains_through_f_linear():
    """The oneDNN inference kernel (llm/onednn.py) agrees with nn.Linear; with gradients it is nn.Linear."""
    from llm.onednn import OneDNNLinear, available, use_onednn

    if not available():
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 300)
    fast = use_onednn(torch.nn.Sequential(torch.nn.Linear(64, 300)))[0]
    fast.load_state_dict(plain.state_dict())
    assert type(fast) is OneDNNLinear
    x = torch.randn(3, 5, 64)
    with torch.inference_mode():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
    x.requires_grad_(True)
    fast(x).sum().backward()  # training: autograd works (F.linear)
    assert fast.weight.grad is not None and x.grad is not None
