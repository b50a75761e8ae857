"""Pretraining on CPU: a tiny model on a tiny synthetic corpus.

Loss goes down; a run stopped half-way and resumed ends in the same state as an uninterrupted
run; 2 torchrun processes (gloo) match one process with 2 gradient-accumulation micro-steps.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finetune.pretrain import build_parser, find_resume, main, train
from llm.pretrain_data import TokenData, block_starts, build_token_cache, split_documents
from llm.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "2/2/32/32"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Two files of short made-up documents: one separated by blank lines, one by <|endoftext|>."""
    rng = random.Random(0)
    subj = ["the cat", "a dog", "my friend", "the old man", "a small bird"]
    verb = ["sees", "likes", "follows", "finds", "watches"]
    obj = ["the ball", "a tree", "the river", "some bread", "the moon"]
    docs = [" ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}." for _ in range(rng.randint(2, 6)))
            for _ in range(300)]
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("\n\n".join(docs[:150]))
    (d / "b.txt").write_text("<|endoftext|>".join(docs[150:]))
    return [d / "a.txt", d / "b.txt"]


def run_args(corpus, out, *extra: str) -> list[str]:
    return ["--data", *map(str, corpus), "--out", str(out), "--shape", SHAPE, "--batch-size", "4",
            "--warmup-steps", "3", "--lr", "3e-3", "--eval-iters", "2", "--sample-tokens", "8",
            "--threads", "1", "--no-progress", *extra]


def pretrain(argv: list[str]) -> dict:
    with torch.random.fork_rng():  # the run seeds torch; keep other tests independent of it
        return train(build_parser().parse_args(argv))


def test_split_documents():
    assert split_documents("a b\n\n  \nc\n\n") == ["a b", "c"]
    # with <|endoftext|> separators, blank lines stay inside a document
    assert split_documents("p1\n\np2<|endoftext|>q") == ["p1\n\np2", "q"]


def test_token_cache_and_sampling(corpus, tokenizer, tmp_path):
    cache = build_token_cache(corpus, tmp_path, tokenizer, val_fraction=0.1, progress=False)
    data = TokenData.open(cache)
    meta = data.meta
    assert meta["documents"] == 300 and len(data.train) + len(data.val) == meta["tokens"]
    every = np.concatenate([data.train, data.val])
    assert every.dtype == np.uint16 and int(np.sum(every == tokenizer.eot_id)) == 300  # one per document
    first = tokenizer.decode(data.train[:40].tolist())
    assert first.startswith(corpus[0].read_text()[:20])
    mtime = (cache / "tokens.bin").stat().st_mtime_ns
    build_token_cache(corpus, tmp_path, tokenizer, val_fraction=0.1, progress=False)  # up to date: no rewrite
    assert (cache / "tokens.bin").stat().st_mtime_ns == mtime
    # blocks are a function of (seed, step, micro-batch): reproducible, and different per micro-batch
    a = block_starts(len(data.train), 32, 4, seed=1, step=5, micro=0)
    assert (a == block_starts(len(data.train), 32, 4, seed=1, step=5, micro=0)).all()
    assert not (a == block_starts(len(data.train), 32, 4, seed=1, step=5, micro=1)).all()
    x, y = data.batch("train", a, 32)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])


def test_loss_decreases_and_output_is_a_base(corpus, tokenizer, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(run_args(corpus, out, "--max-steps", "40", "--eval-every", "20"))
    state = json.loads((out / "resume" / "state.json").read_text())
    train_losses = [loss for _, loss in state["history"]["train"]]
    assert train_losses[0] > 10.0  # ~ln(50257) at random init
    assert np.mean(train_losses[-5:]) < train_losses[0] - 3.0
    assert summary["val_loss"] < train_losses[0] - 3.0
    assert (out / "loss.png").stat().st_size > 0
    log = (out / "log.txt").read_text()
    assert "val" in log and "sample 40" in log
    model, cfg = load_model(out, "cpu", "fp32")  # what the fine-tunes' --base does
    assert model.config.n_layer == 2 and cfg["metadata"]["pretrain"]["step"] == 40


@pytest.mark.parametrize("average", [(), ("--average", "0.9")], ids=["live-weights", "weight-average"])
def test_stop_and_resume_matches_uninterrupted_run(corpus, tokenizer, tmp_path, average):
    common = ("--max-steps", "10", "--eval-every", "4", "--sample-every", "0", "--dropout", "0.1", *average)
    straight = pretrain(run_args(corpus, tmp_path / "straight", *common))
    first = pretrain(run_args(corpus, tmp_path / "resumed", *common, "--stop-after", "6"))
    assert first["step"] == 6 and find_resume(tmp_path / "resumed") is not None
    resumed = pretrain(run_args(corpus, tmp_path / "resumed", *common))
    assert resumed["step"] == 10
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-5)
    a, b = load_file(str(tmp_path / "straight/model.safetensors")), load_file(str(tmp_path / "resumed/model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    oa = load_file(str(tmp_path / "straight/resume/optimizer.safetensors"))
    ob = load_file(str(tmp_path / "resumed/resume/optimizer.safetensors"))
    assert oa.keys() == ob.keys()
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=1e-5, atol=1e-7)
    if average:  # the checkpoint is the average (compared above), and the live weights resumed too
        live_a = load_file(str(tmp_path / "straight/resume/model.safetensors"))
        live_b = load_file(str(tmp_path / "resumed/resume/model.safetensors"))
        assert any(not torch.equal(live_a[k], a[k]) for k in a)  # the average is not the live weights
        for k in live_a:
            torch.testing.assert_close(live_b[k], live_a[k], rtol=1e-5, atol=1e-6)
    ha = json.loads((tmp_path / "straight/resume/state.json").read_text())["history"]
    hb = json.loads((tmp_path / "resumed/resume/state.json").read_text())["history"]
    assert [s for s, _ in ha["train"]] == [s for s, _ in hb["train"]] == list(range(1, 11))


def test_a_damaged_resume_state_is_one_clear_error_naming_the_file(corpus, tokenizer, tmp_path, capsys):
    common = ("--max-steps", "4", "--eval-every", "2", "--sample-every", "0", "--stop-after", "2")
    pretrain(run_args(corpus, tmp_path / "run", *common))
    resume = tmp_path / "run/resume"
    for name, damage in (("state.json", b"{'not': json"), ("optimizer.safetensors", b"\x80\x04K\x01.")):
        good = (resume / name).read_bytes()
        (resume / name).write_bytes(damage)
        assert main(run_args(corpus, tmp_path / "run", *common)) == 2
        err = capsys.readouterr().err
        assert name in err and "--fresh" in err and "Traceback" not in err
        (resume / name).write_bytes(good)


def test_torchrun_two_processes_match_one_with_grad_accum(corpus, tokenizer, tmp_path):
    common = ("--max-steps", "6", "--eval-every", "3", "--sample-every", "0")
    single = pretrain(run_args(corpus, tmp_path / "single", *common, "--grad-accum", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "finetune.pretrain", *run_args(corpus, tmp_path / "ddp", *common, "--device", "cpu")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "(2 x 1 x 4 x 32)" in log  # two ranks, one micro-batch each
    ddp = json.loads((tmp_path / "ddp" / "resume" / "state.json").read_text())["history"]
    one = json.loads((tmp_path / "single" / "resume" / "state.json").read_text())["history"]
    # same global batch each step: the losses agree up to float reduction order
    np.testing.assert_allclose([l for _, l in ddp["train"]], [l for _, l in one["train"]], rtol=1e-4)
    np.testing.assert_allclose([l for _, l in ddp["val"]], [l for _, l in one["val"]], rtol=1e-4)
    a, b = load_file(str(tmp_path / "single/model.safetensors")), load_file(str(tmp_path / "ddp/model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
