"""`make app`'s preparation step: it names the exact commands, trains only what is missing, and
never keeps the app from starting (failures and Ctrl-C are reported, not raised)."""
from __future__ import annotations

import pytest

from finetune import prepare_app
from llm.checkpoint import save_checkpoint
from llm.model import GPTClassifier


@pytest.fixture
def ckpts(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SPAM_CHECKPOINT", str(tmp_path / "spam"))
    monkeypatch.setenv("LLM_INSTRUCT_CHECKPOINT", str(tmp_path / "instruct"))
    monkeypatch.delenv(prepare_app.SKIP_ENV, raising=False)
    return tmp_path


def test_check_only_names_the_commands_and_trains_nothing(ckpts, capsys):
    calls = []
    assert prepare_app.main(["--check", "--base", "/models/gpt2-mini"], runner=lambda m, a: calls.append(m)) == 0
    err = capsys.readouterr().err
    assert calls == []
    assert f"python -m finetune.spam train --out {ckpts / 'spam'} --base /models/gpt2-mini" in err
    assert f"python -m finetune.instruct train --out {ckpts / 'instruct'} --base /models/gpt2-mini" in err


def test_skip_env_var(ckpts, monkeypatch, capsys):
    monkeypatch.setenv(prepare_app.SKIP_ENV, "1")
    calls = []
    assert prepare_app.main([], runner=lambda m, a: calls.append(m)) == 0
    assert calls == [] and "LLM_SKIP_TRAINING=1" in capsys.readouterr().err


def test_trains_only_what_is_missing_in_order(ckpts, tiny_model, capsys):
    save_checkpoint(tiny_model, ckpts / "instruct")
    calls = []
    assert prepare_app.main(["--sms-data", "sms.txt"], runner=lambda m, a: calls.append((m, a)) or 0) == 0
    assert calls == [("finetune.spam", ["prepare", "--sms-data", "sms.txt"]),
                     ("finetune.spam", ["train", "--out", str(ckpts / "spam")])]


def test_failures_and_ctrl_c_do_not_block_the_app(ckpts, capsys):
    def runner(module, argv):
        if module == "finetune.spam":
            return 2  # e.g. offline, no data
        raise KeyboardInterrupt

    assert prepare_app.main([], runner=runner) == 0
    err = capsys.readouterr().err
    assert "spam classifier: not created (exited with status 2)" in err
    assert "assistant: skipped (Ctrl-C)" in err


def test_nothing_to_do(ckpts, tiny_model, capsys):
    save_checkpoint(GPTClassifier(tiny_model.config, 2), ckpts / "spam", metadata={"labels": ["ham", "spam"]})
    save_checkpoint(tiny_model, ckpts / "instruct")
    assert prepare_app.main([], runner=lambda m, a: pytest.fail("nothing should run")) == 0
    err = capsys.readouterr().err
    assert "checkpoints found" in err and "will not load" not in err


def test_a_checkpoint_that_is_there_but_will_not_load_is_named_not_overwritten(ckpts, tiny_model, capsys):
    save_checkpoint(tiny_model, ckpts / "spam")  # a language model where the classifier belongs
    save_checkpoint(tiny_model, ckpts / "instruct")
    weights = ckpts / "instruct/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    assert prepare_app.main([], runner=lambda m, a: pytest.fail("nothing should run")) == 0
    err = capsys.readouterr().err
    assert f"the spam classifier checkpoint at {ckpts / 'spam'} is there but will not load" in err
    assert "the assistant checkpoint" in err and "truncated" in err and "checkpoints found" not in err
    assert weights.stat().st_size == 1000  # left as it was
