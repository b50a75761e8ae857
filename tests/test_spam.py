"""Spam mode: data splits, padding and last-token choice, checkpoint round trip, the predict CLI, bad inputs.

Fast tests use a tiny random backbone and synthetic messages; one `shared` test fine-tunes gpt2-mini
briefly on real messages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm.checkpoint import CheckpointError, save_checkpoint
from llm.config import GPTConfig
from llm.model import GPTClassifier
from llm.spam import (LABELS, SPAM_THRESHOLD, SpamClassifier, collate, deduplicate, encode, make_splits,
                      read_collection, write_split)
from finetune import spam as cli

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)


def synthetic_rows(n_ham=60, n_spam=20):
    ham = [("ham", f"see you at {i} o'clock, ok?") for i in range(n_ham)]
    spam = [("spam", f"WINNER! claim prize {i} now, call 0800 {i:04d}") for i in range(n_spam)]
    return ham + spam


@pytest.fixture
def clf_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = GPTClassifier(TINY, 2).eval()
    return save_checkpoint(model, tmp_path / "spam", metadata={"labels": list(LABELS), "max_length": 16})


def test_read_collection_splits_on_first_tab_and_dedups(tmp_path):
    f = tmp_path / "SMSSpamCollection"
    f.write_text('ham\tHe said "hi\tthere"\nspam\tFREE entry\nham\tHe said "hi\tthere"\n', encoding="utf-8")
    rows = read_collection(f)
    assert rows[0] == ("ham", 'He said "hi\tthere"')
    unique, dropped = deduplicate(rows)
    assert dropped == 1 and len(unique) == 2
    f.write_text("eggs\tnot a label\n")
    with pytest.raises(ValueError, match="expected 'ham' or 'spam'"):
        read_collection(f)


def test_splits_are_disjoint_stratified_and_balanced_inside_natural():
    rows = synthetic_rows(200, 50)
    sets = make_splits(rows)
    nat, bal = sets["natural"], sets["balanced"]
    assert sum(len(v) for v in nat.values()) == len(rows)
    assert [sum(r[0] == "spam" for r in nat[s]) for s in ("train", "validation", "test")] == [35, 5, 10]
    for s in nat:  # balanced parts are cut from the same natural part: no train/test leakage across sets
        assert set(bal[s]) <= set(nat[s])
        assert sum(r[0] == "spam" for r in bal[s]) == sum(r[0] == "ham" for r in bal[s])
    assert not set(nat["train"]) & set(bal["test"])
    assert make_splits(rows) == sets  # seeded


def test_collate_right_pads_to_longest_and_caps():
    ids, mask = collate([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = collate([[1, 2, 3, 4, 5]], pad_id=9, max_length=3)
    assert ids.tolist() == [[1, 2, 3]] and mask.tolist() == [[1, 1, 1]]


def test_classifier_reads_the_last_real_token():
    torch.manual_seed(0)
    model = GPTClassifier(TINY, 2).eval()
    seqs = [[5, 6, 7], [8, 9], [10]]
    ids, mask = collate(seqs, pad_id=50256)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        alone = torch.cat([model(torch.tensor([s])) for s in seqs])
        # padding content must not matter
        other_pad = model(collate(seqs, pad_id=0)[0], attention_mask=mask)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched, other_pad, atol=1e-5, rtol=1e-4)


def test_encode_truncates_keeping_the_start_and_rejects_empty(tokenizer):
    long = "win cash " * 10000  # ~ 90,000 characters
    ids = encode(tokenizer, long, 16)
    assert len(ids) == 16 and ids == tokenizer.encode(long)[:16]
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            encode(tokenizer, empty, 16)


def test_save_load_round_trip_and_label_mapping(clf_checkpoint, tokenizer):
    clf = SpamClassifier.load(clf_checkpoint, device="cpu")
    assert clf.labels == ("ham", "spam") and clf.max_length == 16
    texts = ["hello there", "FREE prize, call now", "x" * 50_000]
    out = clf.classify(texts)
    assert len(out) == 3
    ids, mask = collate([encode(tokenizer, t, 16) for t in texts], tokenizer.eot_id, 16)
    torch.manual_seed(0)
    ref = GPTClassifier(TINY, 2).eval()  # same seed -> same weights as the saved model
    with torch.no_grad():
        p = torch.softmax(ref(ids, attention_mask=mask), -1)[:, 1]
    for (label, p_spam), q in zip(out, p.tolist()):
        assert p_spam == pytest.approx(q, abs=1e-5)
        assert label == ("spam" if p_spam >= SPAM_THRESHOLD else "ham")


def test_load_missing_checkpoint_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SPAM_CHECKPOINT", str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="python -m finetune.spam train"):
        SpamClassifier.load()


def test_predict_cli_json_and_files(clf_checkpoint, tokenizer, tmp_path, capsys):
    ck = str(clf_checkpoint)
    assert cli.main(["predict", "--checkpoint", ck, "--json", "hello", "WIN a prize"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["text"] for o in out] == ["hello", "WIN a prize"]
    assert all(o["label"] in LABELS and 0.0 <= o["p_spam"] <= 1.0 for o in out)

    csv_file = tmp_path / "m.csv"
    csv_file.write_text('id,Message\n1,"hi, how are you"\n2,FREE entry\n', encoding="utf-8")
    assert cli.main(["predict", "--checkpoint", ck, "--json", "--file", str(csv_file)]) == 0
    assert [o["text"] for o in json.loads(capsys.readouterr().out)] == ["hi, how are you", "FREE entry"]

    txt = tmp_path / "m.txt"
    txt.write_bytes(b"caf\xe9 tonight?\n\nok " + b"y" * 50_000 + b"\n")  # Windows-1252 byte, blank line, huge message
    assert cli.main(["predict", "--checkpoint", ck, "--json", "--file", str(txt)]) == 0
    cap = capsys.readouterr()
    assert "read as Windows-1252" in cap.err and "only the start" in cap.err  # the app's rule: cp1252, not U+FFFD
    assert [o["text"][:6] for o in json.loads(cap.out)] == ["café t", "ok yyy"]


def test_predict_cli_bad_inputs(clf_checkpoint, tmp_path, capsys):
    ck = str(clf_checkpoint)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,amount\n1,20\n")
    assert cli.main(["predict", "--checkpoint", ck, "--file", str(bad)]) == 2
    assert "no text column" in capsys.readouterr().err
    unquoted = tmp_path / "unquoted.csv"  # a comma inside an unquoted message: refused, not classified by halves
    unquoted.write_text("text\nWINNER!! Claim your prize now, call 09061701461\nSee you at 7?\n")
    assert cli.main(["predict", "--checkpoint", ck, "--file", str(unquoted)]) == 2
    assert "data row 1 has more fields than the header's 1" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", ck, ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", ck]) == 2
    assert "nothing to classify" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "missing"), "hi"]) == 2
    assert "python -m finetune.spam train" in capsys.readouterr().err


def test_predict_cli_subprocess(clf_checkpoint, tokenizer):
    r = subprocess.run([sys.executable, "-m", "finetune.spam", "predict", "--checkpoint", str(clf_checkpoint), "--json",
                        "Call now to claim"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["label"] in LABELS


def test_select_trainable():
    torch.manual_seed(0)
    model = GPTClassifier(TINY, 2)
    head = cli.select_trainable(model, "head", 1, 4, 8)
    assert head == sum(p.numel() for p in model.score.parameters())
    last = cli.select_trainable(model, "last", 1, 4, 8)
    assert last == head + sum(p.numel() for p in model.ln_f.parameters()) + sum(p.numel() for p in model.h[-1].parameters())
    assert not any(p.requires_grad for p in model.h[0].parameters())


@pytest.mark.parametrize("what", ["all", "lora"])
def test_train_cli_saves_the_weight_average_as_a_loadable_classifier(what, tiny_checkpoint, tokenizer, tmp_path):
    for split in ("train", "validation"):
        write_split(synthetic_rows(24, 8), tmp_path / "data/natural" / f"{split}.csv")
    args = cli.build_parser().parse_args([
        "train", "--device", "cpu", "--data-dir", str(tmp_path / "data"), "--base", str(tiny_checkpoint), "--train", what,
        "--epochs", "1", "--batch-size", "8", "--eval-every", "2", "--average", "0.9", "--out", str(tmp_path / "ck")])
    metrics = cli.train(args)
    assert metrics["steps"] == 4 and metrics["config"]["average"] == 0.9
    assert metrics["history"]["step"] == [2, 4] and (tmp_path / "ck/accuracy.png").is_file()
    clf = SpamClassifier.load(tmp_path / "ck", device="cpu")
    (label, p_spam), = clf.classify(["WINNER! claim prize 3 now"])
    assert label in LABELS and 0.0 <= p_spam <= 1.0


@pytest.mark.shared
def test_finetune_briefly_on_real_messages(base_model_dir, tokenizer, tmp_path):
    data = os.environ.get("LLM_SPAM_DATA")
    if not data or not Path(data).is_file():
        pytest.skip("no SMS data: set LLM_SPAM_DATA")
    summary = cli.prepare(data, tmp_path / "data", quiet=True)
    assert summary["duplicates_dropped"] > 0
    # a few hundred balanced training messages, one short epoch, head + last block
    for split, keep in (("train", 240), ("validation", 60)):
        f = tmp_path / "data/balanced" / f"{split}.csv"
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        import csv, io  # noqa: E401
        rows = list(csv.reader(io.StringIO("".join(lines))))[: keep + 1]
        with open(f, "w", newline="", encoding="utf-8") as out:
            csv.writer(out).writerows(rows)
    args = cli.build_parser().parse_args([
        "train", "--device", "cpu", "--data-dir", str(tmp_path / "data"), "--split-set", "balanced",
        "--base", str(base_model_dir), "--max-length", "64", "--train", "last", "--last-blocks", "1", "--lr", "2e-4",
        "--weight-decay", "0", "--batch-size", "8", "--epochs", "1", "--out", str(tmp_path / "ck"),
        "--eval-every", "15", "--patience", "10", "--dropout", "0.1"])
    metrics = cli.train(args)
    assert metrics["best"]["val_acc"] >= 0.85  # chance is 0.5 on the balanced split
    clf = SpamClassifier.load(tmp_path / "ck", device="cpu")
    test = cli.read_split(tmp_path / "data/balanced/test.csv")[:100]
    preds = clf.classify([t for _, t in test])
    acc = sum(lab == p for (lab, _), (p, _) in zip(test, preds)) / len(test)
    assert acc >= 0.85
    assert (tmp_path / "ck/loss.png").is_file() and (tmp_path / "ck/train_metrics.json").is_file()
