"""Every checkpoint is checked on load: each corruption x each loader and CLI gives one short
CheckpointError paragraph (exit status 2 from a CLI, "not ready" from the registry), never a traceback.

The checkpoints are tiny random models made here; the CLIs run as real subprocesses, all at once.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conftest import TINY
from llm.checkpoint import FORMAT, CheckpointError, save_checkpoint
from llm.instruct import InstructionModel
from llm.model import GPT, GPTClassifier
from llm.prompt import template_metadata
from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, ModelRegistry, default_specs
from llm.spam import SpamClassifier
from llm.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 400  # "one short paragraph"
SPAM_META = {"labels": ["ham", "spam"], "max_length": 32}


# ----------------------------------------------------------------------------- the corruptions

def _edit_config(d: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((d / "config.json").read_text())
    edit(config)
    (d / "config.json").write_text(json.dumps(config))


def _weights(d: Path) -> bytes:
    return (d / "model.safetensors").read_bytes()


class Unpickled:
    """Unpickling this makes a directory: the proof that a loader unpickled something."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def truncated(d: Path) -> None:
    data = _weights(d)
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


def bad_header(d: Path) -> None:
    data = _weights(d)  # the header's opening brace is byte 8
    (d / "model.safetensors").write_bytes(data[:8] + b"X" + data[9:])


def missing_config(d: Path) -> None:
    (d / "config.json").unlink()


def invalid_json(d: Path) -> None:
    (d / "config.json").write_text('{"format": "llm-checkpoint/1", "task": ')


def ill_typed(d: Path) -> None:
    _edit_config(d, lambda c: c["model"].update(n_layer="ten"))


def shape_mismatch(d: Path) -> None:
    _edit_config(d, lambda c: c["model"].update(n_embd=2 * TINY.n_embd))


def pickle_bin(d: Path) -> None:
    """A torch.save'd pytorch_model.bin instead of model.safetensors (a zip of pickles)."""
    torch.save({"payload": Unpickled(d / "UNPICKLED")}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


def pickle_named_safetensors(d: Path) -> None:
    """A raw pickle under the safetensors name."""
    (d / "model.safetensors").write_bytes(pickle.dumps(Unpickled(d / "UNPICKLED"), protocol=4))


def wrong_task(d: Path) -> None:
    """Nothing to break: the loader is handed the other kind of checkpoint (see `checkpoint_for`)."""


# name -> (corrupt the copy, words the message must hold)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "truncated": (truncated, ("model.safetensors", "truncated")),
    "bad_header": (bad_header, ("model.safetensors", "header")),
    "missing_config": (missing_config, ("no config.json",)),
    "invalid_json": (invalid_json, ("config.json", "not valid JSON")),
    "ill_typed": (ill_typed, ("n_layer", "'ten'")),
    "shape_mismatch": (shape_mismatch, ("wte.weight", f"[50257, {TINY.n_embd}]", f"[50257, {2 * TINY.n_embd}]")),
    "pickle_bin": (pickle_bin, ("pytorch_model.bin", "pickle", "safetensors")),
    "pickle_named_safetensors": (pickle_named_safetensors, ("pickle", "safetensors")),
    "wrong_task": (wrong_task, ("task",)),
}
# What each kind of loader is, and what the message must name to fix it.
SPAM_FIX = "python -m finetune.spam"
LM_FIX = "python -m finetune.instruct train"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """One healthy checkpoint of each kind."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("good")
    return {"lm": save_checkpoint(GPT(TINY).eval(), root / "lm", metadata={"prompt_template": template_metadata()}),
            "classifier": save_checkpoint(GPTClassifier(TINY, 2).eval(), root / "clf", metadata=SPAM_META)}


def checkpoint_for(good: dict[str, Path], wants: str, corruption: str, dest: Path) -> Path:
    """A copy of the checkpoint a loader of `wants` expects (the other kind for "wrong_task"), corrupted."""
    kind = wants if corruption != "wrong_task" else ("lm" if wants == "classifier" else "classifier")
    shutil.copytree(good[kind], dest)
    CORRUPTIONS[corruption][0](dest)
    return dest


def assert_message(message: str, corruption: str, fix: str | None = None) -> None:
    assert len(message) < MAX_MESSAGE, message
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for words in CORRUPTIONS[corruption][1]:
        assert words in message, (words, message)
    if fix:
        assert fix in message, message


def assert_not_unpickled(d: Path) -> None:
    assert not (d / "UNPICKLED").exists(), "a loader unpickled the file"


# ----------------------------------------------------------------------------- loaders

LOADERS = {  # name -> (the kind it expects, load it, the command its message must name)
    "load_model": ("lm", lambda p: load_model(p, "cpu", "fp32", task="lm"), None),
    "load_model_classifier": ("classifier", lambda p: load_model(p, "cpu", "fp32", task="classification"), None),
    "SpamClassifier.load": ("classifier", lambda p: SpamClassifier.load(p, device="cpu"), SPAM_FIX),
    "InstructionModel.load": ("lm", lambda p: InstructionModel.load(p, device="cpu"), LM_FIX),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("loader", LOADERS)
def test_loader_refuses_with_one_short_paragraph(good, tmp_path, tokenizer, loader, corruption):
    wants, load, fix = LOADERS[loader]
    ckpt = checkpoint_for(good, wants, corruption, tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as info:
        load(ckpt)
    assert_message(str(info.value), corruption, fix)
    assert_not_unpickled(ckpt)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_registry_reports_not_ready_with_the_error(good, tmp_path, tokenizer, corruption):
    """/health reads registry.status(): a model whose checkpoint cannot load must never say ready."""
    spam = checkpoint_for(good, "classifier", corruption, tmp_path / "spam")
    instruct = checkpoint_for(good, "lm", corruption, tmp_path / "instruct")
    registry = ModelRegistry(default_specs(spam_checkpoint=spam, instruct_checkpoint=instruct, device="cpu"))
    for model_id, fix in ((SPAM_MODEL_ID, SPAM_FIX), (INSTRUCT_MODEL_ID, LM_FIX)):
        assert registry.load(model_id) is None
        status = registry.status()[model_id]
        assert status["ready"] is False and status["loading"] is False
        assert_message(status["error"], corruption, fix)
    assert_not_unpickled(spam)
    assert_not_unpickled(instruct)


def test_registry_is_ready_for_healthy_checkpoints(good, tokenizer):
    registry = ModelRegistry(default_specs(spam_checkpoint=good["classifier"], instruct_checkpoint=good["lm"], device="cpu"))
    for model_id in (SPAM_MODEL_ID, INSTRUCT_MODEL_ID):
        assert registry.load(model_id) is not None
        assert registry.status()[model_id]["ready"] is True


BAD_CONFIGS = {  # config.json text or edit -> words the message must hold
    "not UTF-8": (b'{"format": "llm-checkpoint/1", "task": "lm\xff"}', "not UTF-8"),
    "a list": (b"[1, 2, 3]", "JSON object, not a list"),
    "a string": (b'"lm"', "JSON object, not a str"),
    "negative n_embd": (lambda c: c["model"].update(n_embd=-32), "n_embd"),
    "zero n_head": (lambda c: c["model"].update(n_head=0), "n_head"),
    "float n_layer": (lambda c: c["model"].update(n_layer=2.0), "n_layer"),
    "bool n_positions": (lambda c: c["model"].update(n_positions=True), "n_positions"),
    "n_embd not divisible by n_head": (lambda c: c["model"].update(n_head=3), "divisible by n_head"),
    "huge n_layer": (lambda c: c["model"].update(n_layer=10**12), "n_layer"),
    "layers the weights lack": (lambda c: c["model"].update(n_layer=5), "n_layer=5"),
    "NaN epsilon": (lambda c: c["model"].update(layer_norm_epsilon=math.nan), "layer_norm_epsilon"),
    "dropout above 1": (lambda c: c["model"].update(dropout=3), "dropout"),
    "unknown activation": (lambda c: c["model"].update(activation_function="relu" * 100), "activation_function"),
    "model not an object": (lambda c: c.update(model=[2, 2, 32]), '"model" must be an object'),
    "model lacks a field": (lambda c: c["model"].pop("vocab_size"), "vocab_size"),
    "unknown task": (lambda c: c.update(task="regression"), "task 'regression'"),
    "unknown format": (lambda c: c.update(format="llm-checkpoint/9"), "llm-checkpoint/9"),
    "classification without num_classes": (lambda c: c.update(task="classification"), "num_classes"),
    "metadata not an object": (lambda c: c.update(metadata="hi"), '"metadata" must be an object'),
    "a Hugging Face config of another model": (b'{"model_type": "llama"}', "not GPT-2"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_ill_formed_config_is_refused_by_name(good, tmp_path, case):
    change, words = BAD_CONFIGS[case]
    ckpt = tmp_path / "c"
    shutil.copytree(good["lm"], ckpt)
    if isinstance(change, bytes):
        (ckpt / "config.json").write_bytes(change)
    else:
        _edit_config(ckpt, change)
    with pytest.raises(CheckpointError) as info:
        load_model(ckpt, "cpu", "fp32")
    assert words in str(info.value) and len(str(info.value)) < MAX_MESSAGE, str(info.value)


def test_metadata_the_loaders_read_is_checked_on_load(good, tmp_path, tokenizer):
    for n, meta in enumerate(({"labels": "ham,spam"}, {"labels": ["ham", "eggs"]}, {"max_length": "32"},
                              {"max_length": 10**6}, {"max_length": 0}, {"threshold": 1.5}, {"threshold": "0.5"},
                              {"threshold": 0}, {"temperature": 0}, {"temperature": "1"})):
        ckpt = tmp_path / f"spam{n}"
        shutil.copytree(good["classifier"], ckpt)
        _edit_config(ckpt, lambda c: c.update(metadata=meta))
        with pytest.raises(CheckpointError, match=SPAM_FIX):
            SpamClassifier.load(ckpt, device="cpu")
    ckpt = tmp_path / "instruct"
    shutil.copytree(good["lm"], ckpt)
    _edit_config(ckpt, lambda c: c.update(metadata={"prompt_template": "chatml"}))
    with pytest.raises(CheckpointError, match="another prompt template"):
        InstructionModel.load(ckpt, device="cpu")


def test_a_pickle_passed_as_the_checkpoint_is_refused_unopened(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"payload": Unpickled(tmp_path / "UNPICKLED")}, path)
    for load in (lambda: load_model(path), lambda: SpamClassifier.load(path, device="cpu"),
                 lambda: InstructionModel.load(path, device="cpu")):
        with pytest.raises(CheckpointError, match="pickle file .* only safetensors are loaded"):
            load()
    assert_not_unpickled(tmp_path)


# ----------------------------------------------------------------------------- CLIs, as subprocesses

CLIS = {  # name -> (the kind it expects, argv after `python -m`, the command its message must name)
    "llm.generate": ("lm", lambda p: ["llm.generate", "--base", str(p), "--prompt", "Hi", "--max-new-tokens", "2"],
                     LM_FIX),
    "finetune.spam predict": ("classifier", lambda p: ["finetune.spam", "predict", "--checkpoint", str(p), "hello"],
                              SPAM_FIX),
    "finetune.instruct generate": ("lm", lambda p: ["finetune.instruct", "generate", "--checkpoint", str(p),
                                                    "--instruction", "Hi", "--max-new-tokens", "2"], LM_FIX),
}


@pytest.fixture(scope="module")
def cli_runs(good, tmp_path_factory, tokenizer) -> dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess]]:
    """Every CLI on every corruption, run together: each pays Python + torch start-up, so in parallel."""
    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "LLM_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    jobs = {}
    for cli, (wants, argv, _) in CLIS.items():
        for corruption in CORRUPTIONS:
            ckpt = checkpoint_for(good, wants, corruption, root / f"{cli.replace(' ', '_')}-{corruption}")
            jobs[cli, corruption] = (ckpt, [sys.executable, "-m", *argv(ckpt)])

    def run(job):
        ckpt, cmd = job
        return ckpt, subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(jobs, pool.map(run, jobs.values())))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("cli", CLIS)
def test_cli_exits_2_with_one_error_paragraph(cli_runs, cli, corruption):
    ckpt, proc = cli_runs[cli, corruption]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert_message(errors[0].removeprefix("error: "), corruption, CLIS[cli][2])
    assert proc.stdout == ""
    assert_not_unpickled(ckpt)


# ----------------------------------------------------------------------------- config.json, any JSON at all

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def _real_or_any(value) -> st.SearchStrategy:
    """Mostly the real value, so that whole configs often load and one odd field at a time is tried."""
    return st.integers(0, 4).flatmap(lambda i: JSON if i == 4 else st.just(value))  # 0 is what hypothesis tries most


SHAPE = TINY.to_dict()
OURS = st.fixed_dictionaries({  # the real keys, each with its real value or any JSON value
    "format": _real_or_any(FORMAT),
    "task": _real_or_any("lm") | _real_or_any("classification"),
    "model": st.integers(0, 4).flatmap(
        lambda i: JSON if i == 4 else st.fixed_dictionaries({k: _real_or_any(v) for k, v in SHAPE.items()})),
    "num_classes": _real_or_any(2),
    "metadata": st.fixed_dictionaries({}, optional={"labels": _real_or_any(["ham", "spam"]),
                                                    "max_length": _real_or_any(32),
                                                    "prompt_template": _real_or_any(template_metadata())}) | JSON,
})
HUGGING_FACE = st.fixed_dictionaries({}, optional={"model_type": _real_or_any("gpt2"), "n_ctx": _real_or_any(128),
                                                   "resid_pdrop": _real_or_any(0.1),
                                                   **{k: _real_or_any(v) for k, v in SHAPE.items()}})


@pytest.fixture(scope="module")
def property_dirs(good, tmp_path_factory) -> dict[str, Path]:
    """A directory per kind of weights whose config.json each example overwrites."""
    root = tmp_path_factory.mktemp("property")
    out = {}
    for kind, src in good.items():
        out[kind] = root / kind
        out[kind].mkdir()
        shutil.copy(src / "model.safetensors", out[kind] / "model.safetensors")
    return out


@settings(max_examples=60, deadline=None)
@given(config=JSON | OURS | HUGGING_FACE, weights=st.sampled_from(["lm", "classifier"]))
def test_any_config_json_loads_or_raises_checkpoint_error(property_dirs, tokenizer, config, weights):
    d = property_dirs[weights]
    (d / "config.json").write_text(json.dumps(config))
    for name, load in (("load_model", lambda: load_model(d, "cpu", "fp32")),
                       ("SpamClassifier.load", lambda: SpamClassifier.load(d, device="cpu")),
                       ("InstructionModel.load", lambda: InstructionModel.load(d, device="cpu"))):
        try:
            load()
            event(f"{name} loaded")  # --hypothesis-show-statistics: both outcomes are exercised
        except CheckpointError as e:
            assert len(str(e)) < MAX_MESSAGE and "\n" not in str(e), str(e)
