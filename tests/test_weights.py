"""Checkpoints: round trips, and every failure path with a message that names the fix."""
from __future__ import annotations

import json

import pytest
import requests
import torch

from llm import weights
from llm.checkpoint import CheckpointError, save_checkpoint
from llm.config import PRESETS, GPTConfig, preset
from llm.download import DownloadError, download
from llm.model import GPTClassifier
from llm.weights import load_model


def test_presets_have_gpt2_shapes():
    assert {k: (c.n_layer, c.n_head, c.n_embd) for k, c in PRESETS.items()} == {
        "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt3")


def test_round_trip_is_exact(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path, metadata={"note": "hi"})
    loaded, config = load_model(tmp_path)
    assert config["metadata"] == {"note": "hi"} and config["task"] == "lm"
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.wte.weight  # still tied after loading


def test_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    clf = GPTClassifier(GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=32), num_classes=3)
    save_checkpoint(clf, tmp_path, metadata={"labels": ["a", "b", "c"]})
    loaded, config = load_model(tmp_path)
    assert isinstance(loaded, GPTClassifier) and loaded.num_classes == 3
    assert torch.equal(loaded.score.weight, clf.score.weight)


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="neither a preset"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="python -m finetune.spam train"):
        load_model(tmp_path / "nope", hint="Create it with: python -m finetune.spam train ...")


def test_corrupt_or_truncated_weights(tiny_checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)


def test_corrupt_config_and_wrong_shape(tiny_checkpoint, tmp_path):
    (tmp_path / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model"]["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path)


def test_preset_download_without_network_says_how_to_go_offline(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path))
    with pytest.raises(DownloadError, match="--base PATH or set LLM_BASE"):
        load_model("gpt2")


class _FakeResponse:
    """Serves `payload` like requests does, honouring a Range header."""

    def __init__(self, payload: bytes, start: int = 0, headers=None):
        self.payload, self.start = payload, start
        self.status_code = 206 if start else 200
        self.headers = {"Content-Length": str(len(payload) - start), **(headers or {})}

    def raise_for_status(self):
        pass

    def iter_content(self, n):
        body = self.payload[self.start:]
        for i in range(0, len(body), 7):
            yield body[i:i + 7]

    def close(self):
        pass


def test_download_resumes_verifies_and_lands_atomically(monkeypatch, tmp_path):
    import hashlib

    payload = b"0123456789" * 10
    digest = hashlib.sha256(payload).hexdigest()
    seen = []

    def fake_get(url, headers=None, **kwargs):
        seen.append(headers)
        start = int(headers["Range"].split("=")[1].rstrip("-")) if headers else 0
        return _FakeResponse(payload, start, {"X-Linked-Etag": f'"{digest}"'})

    monkeypatch.setattr(requests, "get", fake_get)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(payload[:40])  # an earlier, interrupted download
    download("https://example.invalid/f.bin", dest, offline_hint="use --x")
    assert dest.read_bytes() == payload and not (tmp_path / "f.bin.part").exists()
    assert seen == [{"Range": "bytes=40-"}]


def test_download_rejects_a_bad_checksum(monkeypatch, tmp_path):
    monkeypatch.setattr(requests, "get", lambda url, **kw: _FakeResponse(b"tampered"))
    with pytest.raises(DownloadError, match="integrity check"):
        download("https://example.invalid/f", tmp_path / "f", offline_hint="", sha256="0" * 64)
    assert not (tmp_path / "f").exists()


def test_hf_state_dict_mapping_transposes_conv1d():
    w = torch.randn(4, 12)  # Conv1D c_attn: (in=4, out=12)
    mapped = weights.from_hf_state_dict({"transformer.h.0.attn.c_attn.weight": w, "transformer.h.0.attn.c_attn.bias": torch.zeros(12),
                                          "transformer.h.0.attn.bias": torch.ones(1), "lm_head.weight": torch.ones(1)})
    assert set(mapped) == {"h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias"}
    assert torch.equal(mapped["h.0.attn.c_attn.weight"], w.t())
