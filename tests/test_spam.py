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
from finetune import calibration
from finetune import spam as cli
from finetune import spam_data, spam_eval

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)

# `train` on the test's own split files only: no synthetic or authored messages, each UCI row once
TRAIN_ON_THE_SPLIT_ONLY = ["train", "--device", "cpu", "--synthetic", "0", "--no-authored", "--uci-repeat", "1"]


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
        *TRAIN_ON_THE_SPLIT_ONLY, "--data-dir", str(tmp_path / "data"), "--base", str(tiny_checkpoint), "--train", what,
        "--epochs", "1", "--batch-size", "8", "--eval-every", "2", "--average", "0.9", "--out", str(tmp_path / "ck")])
    metrics = cli.train(args)
    assert metrics["steps"] == 4 and metrics["config"]["average"] == 0.9
    assert metrics["history"]["val_step"] == [2, 4] and (tmp_path / "ck/accuracy.png").is_file()
    clf = SpamClassifier.load(tmp_path / "ck", device="cpu")
    (label, p_spam), = clf.classify(["WINNER! claim prize 3 now"])
    assert label in LABELS and 0.0 <= p_spam <= 1.0


def test_prepare_refuses_a_collection_too_small_for_splits_and_keeps_the_old_ones(tmp_path, capsys):
    (tmp_path / "data/natural").mkdir(parents=True)
    (tmp_path / "data/natural/train.csv").write_text("label,text\nham,kept\n")
    (tmp_path / "two.txt").write_text("ham\thello\nspam\tWIN now\n")
    assert cli.main(["prepare", "--sms-data", str(tmp_path / "two.txt"), "--data-dir", str(tmp_path / "data")]) == 2
    assert "1 ham and 1 spam messages" in capsys.readouterr().err
    assert (tmp_path / "data/natural/train.csv").read_text() == "label,text\nham,kept\n"


@pytest.mark.parametrize("diverging", [["--lr", "1e30"], ["--train", "head", "--lr", "1e30"]], ids=["nan", "huge"])
def test_a_diverging_run_saves_nothing_and_the_good_checkpoint_stays(diverging, tiny_checkpoint, tokenizer, tmp_path,
                                                                      capsys):
    """lr 1e30: the loss stops being a number (all weights) or explodes to ~1e31 and stays finite (the head alone)
    within a few steps. The one loop stops it there with a clear error, before anything is written, so the
    checkpoint already in --out still loads and answers as before."""
    for split in ("train", "validation"):
        write_split(synthetic_rows(24, 8), tmp_path / "data/natural" / f"{split}.csv")
    common = [*TRAIN_ON_THE_SPLIT_ONLY, "--data-dir", str(tmp_path / "data"), "--base", str(tiny_checkpoint),
              "--epochs", "1", "--batch-size", "8", "--eval-every", "2", "--out", str(tmp_path / "ck")]
    cli.train(cli.build_parser().parse_args(common))
    before = {f.name: f.read_bytes() for f in (tmp_path / "ck").iterdir() if f.is_file()}
    assert cli.main([*common, *diverging]) == 2
    assert "training diverged, so nothing was saved" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (tmp_path / "ck").iterdir() if f.is_file()} == before


@pytest.mark.shared
def test_finetune_briefly_on_real_messages(base_model_dir, tokenizer, tmp_path):
    data = os.environ.get("LLM_SPAM_DATA")
    if not data or not Path(data).is_file():
        pytest.skip("no SMS data: set LLM_SPAM_DATA")
    summary = spam_data.prepare(data, tmp_path / "data", quiet=True)
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
        *TRAIN_ON_THE_SPLIT_ONLY, "--data-dir", str(tmp_path / "data"), "--split-set", "balanced",
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


# ----------------------------------------------------------------------------- operating point, calibration, bands
def _ckpt_with(tmp_path, name="spam", **meta):
    torch.manual_seed(0)
    return save_checkpoint(GPTClassifier(TINY, 2).eval(), tmp_path / name,
                           metadata={"labels": list(LABELS), "max_length": 16, **meta})


TEXTS = ["hello there", "FREE prize, call now", "see you at 7", "WIN WIN WIN cash"]


def test_the_checkpoint_threshold_decides_the_label(tmp_path, tokenizer):
    p = SpamClassifier.load(_ckpt_with(tmp_path, "default"), device="cpu").p_spam(TEXTS)
    assert SpamClassifier.load(_ckpt_with(tmp_path, "default"), device="cpu").threshold == SPAM_THRESHOLD
    low, high = min(p) * 0.99, min(max(p) * 1.01, 0.999999)
    everything = SpamClassifier.load(_ckpt_with(tmp_path, "low", threshold=low), device="cpu")
    nothing = SpamClassifier.load(_ckpt_with(tmp_path, "high", threshold=high), device="cpu")
    assert everything.threshold == low
    assert [lab for lab, _ in everything.classify(TEXTS)] == ["spam"] * 4
    assert [lab for lab, _ in nothing.classify(TEXTS)] == ["ham"] * 4
    assert [q for _, q in nothing.classify(TEXTS)] == pytest.approx(p)  # the threshold moves labels, not probabilities
    assert [lab for lab, _ in nothing.classify(TEXTS, threshold=low)] == ["spam"] * 4  # a caller may override
    v = everything.verdicts(TEXTS)
    assert [x.label for x in v] == ["spam"] * 4 and all(x.band in ("spam", "likely spam") for x in v)


@pytest.mark.parametrize("meta", [{"threshold": 0}, {"threshold": 1}, {"threshold": 1.5}, {"threshold": "0.7"},
                                  {"threshold": True}, {"threshold": None}, {"temperature": 0}, {"temperature": -2.0},
                                  {"temperature": "2"}, {"temperature": False}])
def test_bad_threshold_or_temperature_metadata_is_a_checkpoint_error(meta, tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="threshold|temperature"):
        SpamClassifier.load(_ckpt_with(tmp_path, **meta), device="cpu")


def test_the_temperature_divides_the_logits(tmp_path, tokenizer):
    raw = SpamClassifier.load(_ckpt_with(tmp_path, "raw"), device="cpu")
    hot = SpamClassifier.load(_ckpt_with(tmp_path, "hot", temperature=4.0), device="cpu")
    logits = raw.logits(TEXTS).double()
    assert hot.p_spam(TEXTS) == pytest.approx(torch.softmax(logits / 4, -1)[:, 1].tolist(), abs=1e-6)
    assert hot.p_spam(TEXTS, calibrated=False) == pytest.approx(raw.p_spam(TEXTS), abs=1e-6)


def test_fit_temperature_recovers_an_overconfident_scale():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, generator=g) * 2
    y = (torch.rand(20_000, generator=g) < torch.sigmoid(z)).long()  # calibrated when the logit is z
    logits = torch.stack([torch.zeros_like(z), 3 * z], 1)  # 3x overconfident
    t = calibration.fit_temperature(logits, y.tolist())
    assert t == pytest.approx(3.0, rel=0.05)
    assert calibration.nll(logits, y, t) < calibration.nll(logits, y)
    p_before = torch.softmax(logits, -1)[:, 1].tolist()
    p_after = torch.softmax(logits / t, -1)[:, 1].tolist()
    assert calibration.ece(p_after, y.tolist()) < 0.02 < calibration.ece(p_before, y.tolist())
    assert calibration.brier(p_after, y.tolist()) < calibration.brier(p_before, y.tolist())


def test_ece_brier_and_bins_by_hand():
    assert calibration.ece([0.5] * 4, [0, 1, 0, 1]) == 0 and calibration.brier([0.5] * 4, [0, 1, 0, 1]) == 0.25
    assert calibration.ece([1.0, 0.0], [0, 1]) == 1 and calibration.brier([1.0, 0.0], [0, 1]) == 1
    bins = calibration.reliability_bins([0.0, 0.05, 1.0, 0.99], [0, 1, 1, 1])
    assert [(n, round(m, 3), f) for _, _, n, m, f in bins] == [(2, 0.025, 0.5), (2, 0.995, 1.0)]  # 1.0 in the last bin


def test_threshold_for_precision_is_the_lowest_reaching_the_target():
    p = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3]
    y = [1, 1, 0, 1, 1, 0, 1]
    assert calibration.threshold_for_precision(p, y, 0.8) == (0.6, 0.8, True)  # 4 of 5 at 0.6
    assert calibration.threshold_for_precision(p, y, 1.0) == (0.9, 1.0, True)
    t, prec, met = calibration.threshold_for_precision([0.9, 0.8], [0, 1], 0.9)
    assert not met and (t, prec) == (0.8, 0.5)  # unreachable: the best precision, reported as not met


def test_bands_and_displayed_probabilities():
    from llm.spam import band_of, format_probability
    assert [band_of(p) for p in (0.95, 0.9, 0.7, 0.5, 0.49, 0.2, 0.19, 0.0)] == \
        ["spam", "spam", "likely spam", "likely spam", "unsure", "unsure", "ham", "ham"]
    assert band_of(0.93, threshold=0.95) == "unsure" and band_of(0.96, threshold=0.95) == "spam"
    assert band_of(0.15, threshold=0.1) == "likely spam" and band_of(0.05, threshold=0.1) == "ham"
    assert format_probability(0.9996) == "> 99.9%" and format_probability(1.0) == "> 99.9%"
    assert format_probability(0.0004) == "< 0.1%" and format_probability(0.0) == "< 0.1%"
    assert format_probability(0.9994) == "99.9%" and format_probability(0.973) == "97.3%"


def _write_data(root, rows_by_split, set_name="natural"):
    for split, rows in rows_by_split.items():
        write_split(rows, root / set_name / f"{split}.csv")


def test_train_with_target_precision_stores_a_threshold_reaching_it(tiny_checkpoint, tokenizer, tmp_path):
    rows = synthetic_rows(48, 16)
    _write_data(tmp_path / "data", {"train": rows, "validation": synthetic_rows(30, 10)})
    args = cli.build_parser().parse_args([
        *TRAIN_ON_THE_SPLIT_ONLY, "--data-dir", str(tmp_path / "data"), "--base", str(tiny_checkpoint),
        "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--eval-every", "4", "--average", "0",
        "--target-precision", "0.95", "--out", str(tmp_path / "ck")])
    metrics = cli.train(args)
    meta = json.loads((tmp_path / "ck/config.json").read_text())["metadata"]
    assert meta["target_precision"] == 0.95 and meta["temperature"] > 0
    assert metrics["config"]["threshold"] == meta["threshold"]
    clf = SpamClassifier.load(tmp_path / "ck", device="cpu")
    assert clf.threshold == meta["threshold"] and clf.temperature == meta["temperature"]
    val = synthetic_rows(30, 10)
    pred = [lab for lab, _ in clf.classify([t for _, t in val])]
    s = spam_eval.scores([LABELS.index(lab) for lab, _ in val], [LABELS.index(lab) for lab in pred])
    assert meta["target_precision_met"], meta
    assert s["precision"] >= 0.95 and s["precision"] == pytest.approx(meta["val_precision_at_threshold"])
    assert meta["calibration"]["val_nll_after"] <= meta["calibration"]["val_nll_before"] + 1e-12


def test_train_adds_authored_messages_repeats_uci_ones_and_validates_on_extra_files(tiny_checkpoint, tokenizer, tmp_path):
    """The default data mix, end to end on a tiny model: the UCI rows --uci-repeat times, the authored train part in
    training and its validation part in validation, an --extra-validation file there too; `calibrate` rebuilds the
    same validation mix from the checkpoint's metadata."""
    import math

    _write_data(tmp_path / "data", {"train": synthetic_rows(24, 8), "validation": synthetic_rows(24, 8)})
    extra = tmp_path / "more_validation.csv"
    write_split(synthetic_rows(6, 2), extra)
    ck = tmp_path / "ck"
    args = cli.build_parser().parse_args([
        "train", "--device", "cpu", "--synthetic", "0", "--uci-repeat", "2", "--extra-validation", str(extra),
        "--data-dir", str(tmp_path / "data"), "--base", str(tiny_checkpoint), "--max-length", "32", "--epochs", "1",
        "--batch-size", "8", "--eval-every", "1000", "--average", "0", "--out", str(ck)])
    metrics = cli.train(args)
    authored_train, authored_val = len(spam_data.authored_rows("train")), len(spam_data.authored_rows("validation"))
    assert metrics["steps"] == math.ceil((2 * 32 + authored_train) / 8)
    meta = json.loads((ck / "config.json").read_text())["metadata"]
    assert meta["authored"] is True and meta["uci_repeat"] == 2 and meta["extra_validation"] == [str(extra.resolve())]
    assert meta["calibration"]["messages"] == 32 + authored_val + 8
    assert cli.main(["calibrate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]) == 0
    assert json.loads((ck / "config.json").read_text())["metadata"]["calibration"]["messages"] == 32 + authored_val + 8
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["train", "--uci-repeat", bad])


def test_train_threshold_flag_is_stored_and_bad_values_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--threshold", "1"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--threshold", "0.3", "--target-precision", "0.9"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--target-precision", "0"])
    capsys.readouterr()
    assert cli.build_parser().parse_args(["train", "--threshold", "0.3"]).threshold == 0.3


def test_calibrate_an_existing_checkpoint_keeps_decisions_and_metadata(tmp_path, tokenizer):
    ck = _ckpt_with(tmp_path, threshold=0.52)
    before = SpamClassifier.load(ck, device="cpu")
    val = synthetic_rows(20, 10)
    _write_data(tmp_path / "data", {"validation": val})
    labels_before = [lab for lab, _ in before.classify([t for _, t in val] + TEXTS)]
    assert cli.main(["calibrate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]) == 0
    meta = json.loads((ck / "config.json").read_text())["metadata"]
    assert meta["max_length"] == 16 and meta["labels"] == list(LABELS)  # the rest of the metadata is kept
    assert not list(ck.glob("*.tmp"))
    after = SpamClassifier.load(ck, device="cpu")
    assert after.temperature == meta["temperature"] != 1.0
    assert [lab for lab, _ in after.classify([t for _, t in val] + TEXTS)] == labels_before
    y = [LABELS.index(lab) for lab, _ in val]
    logits = before.logits([t for _, t in val])
    assert calibration.nll(logits, torch.tensor(y), after.temperature) <= calibration.nll(logits, torch.tensor(y))
    # calibrating again refits from the raw logits: same temperature, same decisions
    assert cli.main(["calibrate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]) == 0
    again = SpamClassifier.load(ck, device="cpu")
    assert again.temperature == pytest.approx(after.temperature, rel=1e-6)
    assert again.threshold == pytest.approx(after.threshold, rel=1e-6)


def test_the_recalibrate_hint_for_a_bad_temperature_works(tmp_path, tokenizer):
    """A checkpoint whose stored temperature is not a positive number is refused with "Recalibrate with: ...
    calibrate"; that command must then succeed (it starts from T = 1) and leave a loadable checkpoint."""
    ck = _ckpt_with(tmp_path, temperature="hot")
    with pytest.raises(CheckpointError, match="Recalibrate with: python -m finetune.spam calibrate"):
        SpamClassifier.load(ck, device="cpu")
    _write_data(tmp_path / "data", {"validation": synthetic_rows(20, 10)})
    assert cli.main(["calibrate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu"]) == 0
    assert SpamClassifier.load(ck, device="cpu").temperature > 0


def test_eval_reports_ece_brier_and_draws_reliability_diagrams(tmp_path, tokenizer, capsys):
    pytest.importorskip("sklearn")
    ck = _ckpt_with(tmp_path, temperature=2.0)
    for set_name in ("natural", "balanced"):
        _write_data(tmp_path / "data", {"train": synthetic_rows(20, 10), "test": synthetic_rows(12, 6)}, set_name)
    assert cli.main(["eval", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                     "--out", str(tmp_path / "out")]) == 0
    assert "ECE" in capsys.readouterr().out
    m = json.loads((tmp_path / "out/eval_metrics.json").read_text())
    assert m["temperature"] == 2.0 and m["threshold"] == SPAM_THRESHOLD
    for set_name in ("natural", "balanced"):
        c = m[set_name]["gpt2_classifier"]["calibration"]
        assert {"ece_before", "ece_after", "brier_before", "brier_after", "bands"} <= set(c)
        assert sum(c["bands"].values()) == 18
        assert (tmp_path / f"out/reliability_{set_name}.png").stat().st_size > 1000


def test_predict_cli_threshold_and_bands(tmp_path, tokenizer, capsys):
    ck = str(_ckpt_with(tmp_path))
    assert cli.main(["predict", "--checkpoint", ck, "--json", "--threshold", "0.000001", *TEXTS]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["label"] for o in out] == ["spam"] * 4 and all(o["band"] in ("spam", "likely spam") for o in out)
    assert cli.main(["predict", "--checkpoint", ck, "hello"]) == 0
    line = capsys.readouterr().out
    assert "p_spam" in line and "%" in line


# ----------------------------------------------------------------------------- explanations by occlusion
class PlantedWord(torch.nn.Module):
    """A tiny bag-of-tokens classifier: the planted word's tokens push hard towards spam, one word mildly
    towards ham, everything else not at all. Counts its forward calls."""

    def __init__(self, tokenizer, spam_word=" zebra", ham_word=" meeting"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(tokenizer.n_vocab if hasattr(tokenizer, "n_vocab") else 50257))
        with torch.no_grad():
            for t in tokenizer.encode(spam_word):
                self.weight[t] = 8.0
            for t in tokenizer.encode(ham_word):
                self.weight[t] = -0.5
        self.calls = 0

    def forward(self, ids, attention_mask=None):
        self.calls += 1
        score = (self.weight[ids] * attention_mask).sum(-1) - 4.0
        return torch.stack([torch.zeros_like(score), score], -1)


def test_occlusions_drop_one_word_and_its_space():
    from llm.spam import occlusions
    assert occlusions("win  a prize") == [("win", "a prize"), ("a", "win  prize"), ("prize", "win  a")]
    assert occlusions("hello") == [("hello", "")]


def test_a_planted_word_decides_the_verdict_and_is_ranked_first(tokenizer):
    model = PlantedWord(tokenizer)
    clf = SpamClassifier(model, tokenizer, max_length=64)
    (label, p), = clf.classify(["see you at the meeting zebra tonight"])
    assert label == "spam" and p > 0.95
    assert clf.classify(["see you at the meeting tonight"])[0][0] == "ham"
    model.calls = 0
    e = clf.explain("see you at the meeting zebra tonight")
    assert model.calls == 1  # the message and all its variants in ONE forward pass
    assert e.p_spam == pytest.approx(p)
    assert [w for w, _ in e.words] == "see you at the meeting zebra tonight".split()
    assert e.towards_spam()[0][0] == "zebra" and e.towards_spam()[0][1] > 0.5
    assert e.towards_ham()[0][0] == "meeting"
    assert len(e.towards_spam()) == 1  # words without effect are in neither list
    assert clf.explain("zebra").towards_spam()[0][0] == "zebra"  # the only word: removed, <|endoftext|> is left


def test_explain_counts_one_forward_per_message_on_a_real_tiny_classifier(clf_checkpoint, tokenizer):
    clf = SpamClassifier.load(clf_checkpoint, device="cpu")
    calls = []
    clf.model.register_forward_hook(lambda *a: calls.append(1))
    texts = ["hello there friend", "FREE prize, call now " * 20, "ok"]
    out = [clf.explain(t) for t in texts]
    assert len(calls) == 3
    assert [e.p_spam for e in out] == pytest.approx([q for _, q in clf.classify(texts)], abs=1e-5)
    assert len(out[1].words) < len(texts[1].split())  # only the words the classifier reads (max_length 16)
    with pytest.raises(ValueError, match="empty"):
        clf.explain("  ")


def test_predict_cli_explain(clf_checkpoint, tokenizer, capsys):
    ck = str(clf_checkpoint)
    assert cli.main(["predict", "--checkpoint", ck, "--json", "--explain", "win a prize now", "see you"]) == 0
    out = json.loads(capsys.readouterr().out)
    for o in out:
        words = [w for w, _ in o["explanation"]["towards_spam"] + o["explanation"]["towards_ham"]]
        assert set(words) <= set(o["text"].split())
        assert all(x > 0 for _, x in o["explanation"]["towards_spam"])
    assert cli.main(["predict", "--checkpoint", ck, "--explain", "win a prize now"]) == 0
    assert "towards spam:" in capsys.readouterr().out
