"""Spam mode, verdicts people can trust: the held-out challenge sets (finetune/data/sms_challenge*.csv), the
robustness transforms (finetune/robustness.py) and the eval report that uses both. Tiny random models only."""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from finetune import robustness as rb
from finetune import spam as cli
from finetune import spam_eval
from llm.checkpoint import save_checkpoint
from llm.config import GPTConfig
from llm.model import GPTClassifier
from llm.spam import LABELS, SpamDataError, write_split

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)
SPAM_CATEGORIES = {"parcel_fee", "account_blocked", "family_impersonation", "job_task", "crypto_investment",
                   "prize_tester", "refund_fine"}
HAM_CATEGORIES = {"delivery_notice", "appointment", "otp_code", "pharmacy", "school_club", "family_friends",
                  "bank_notice", "ride_food"}


# ----------------------------------------------------------------------------- the bundled challenge set
def test_the_first_challenge_set_is_large_balanced_and_categorised():
    rows = spam_eval.read_challenge(cli.CHALLENGE_FILE.with_name("sms_challenge.csv"))
    assert len(rows) >= 160
    labels = Counter(lab for lab, _, _ in rows)
    assert 0.4 <= labels["spam"] / len(rows) <= 0.6, labels
    assert len({t for _, t, _ in rows}) == len(rows), "duplicate messages"
    by_cat = {}
    for lab, _, cat in rows:
        by_cat.setdefault(cat, set()).add(lab)
    assert all(len(labs) == 1 for labs in by_cat.values()), "a category holds both labels"
    assert {c for c, labs in by_cat.items() if labs == {"spam"}} == SPAM_CATEGORIES
    assert {c for c, labs in by_cat.items() if labs == {"ham"}} == HAM_CATEGORIES
    assert all(n >= 8 for n in Counter(cat for _, _, cat in rows).values())


CHALLENGE_FILES = sorted(cli.CHALLENGE_FILE.parent.glob("sms_challenge*.csv"))


@pytest.mark.parametrize("path", CHALLENGE_FILES, ids=lambda p: p.name)
def test_challenge_readme_counts_match_the_file(path):
    readme = (ROOT / "finetune/data/README.md").read_text(encoding="utf-8")
    section = readme[readme.index(f"## `{path.name}`"):]
    end = section.find("\n## ", 1)
    section = section if end == -1 else section[:end]
    counts = Counter(cat for _, _, cat in spam_eval.read_challenge(path))
    for cat, n in counts.items():
        assert re.search(rf"`{cat}`\s*\|\s*(ham|spam)\s*\|\s*{n}\s*\|", section), f"{cat} ({n}) not in its README section"


@pytest.mark.parametrize("path", CHALLENGE_FILES, ids=lambda p: p.name)
def test_challenge_messages_are_not_in_the_training_collection(path):
    src = Path(os.environ.get("LLM_SPAM_DATA") or "")
    if not src.is_file():
        pytest.skip("SMSSpamCollection not available: set LLM_SPAM_DATA")
    known = {line.split("\t", 1)[1].strip().lower() for line in src.read_text(encoding="utf-8", errors="replace").splitlines()
             if "\t" in line}
    rows = spam_eval.read_challenge(path)
    assert len(rows) >= 80 and not [t for _, t, _ in rows if t.strip().lower() in known]


def test_read_challenge_refuses_bad_files(tmp_path):
    (tmp_path / "nocat.csv").write_text("label,text\nham,hi\n")
    with pytest.raises(SpamDataError, match="category"):
        spam_eval.read_challenge(tmp_path / "nocat.csv")
    (tmp_path / "badlabel.csv").write_text("label,text,category\nham,hi,x\nmaybe,hello,x\nspam,,y\n")
    with pytest.raises(SpamDataError, match="line 3, 4"):
        spam_eval.read_challenge(tmp_path / "badlabel.csv")
    with pytest.raises(SpamDataError, match="does not exist"):
        spam_eval.read_challenge(tmp_path / "missing.csv")
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpamDataError, match="binary.csv"):
        spam_eval.read_challenge(tmp_path / "binary.csv")
    # the encodings `predict --file` reads: Windows-1252 and UTF-16 with a BOM, as well as UTF-8
    for encoding in ("cp1252", "utf-16"):
        (tmp_path / "other.csv").write_bytes("label,text,category\nham,schön,family\n".encode(encoding))
        assert spam_eval.read_challenge(tmp_path / "other.csv") == [("ham", "schön", "family")]


# ----------------------------------------------------------------------------- transforms
SAMPLES = [
    "WINNER!! Call 09061701461 to claim. Visit www.Ldew.com1win150ppmx3age16 now",
    "Royal Mail: pay £1.45 at https://royalmail-redelivery.info/pay, or email help@foo.co.uk.",
    "Your code is 482913. Don't share it.",
    "Hi mum, new number, can you send £850? x",
    "  already  spaced\tmessage  ",
    "Go to nhs.uk. Then call 0330 912 4455 or text 87066",
]


@pytest.mark.parametrize("name", list(rb.TRANSFORMS))
def test_transforms_are_deterministic_and_keep_labels(name):
    fn = rb.TRANSFORMS[name]
    assert [fn(t) for t in SAMPLES] == [fn(t) for t in SAMPLES]
    rows = [("spam", t, "cat") for t in SAMPLES] + [("ham", "see you at 7", "x")]
    out = rb.variants(rows, name)
    assert [(r[0], r[2]) for r in out] == [(r[0], r[2]) for r in rows]
    assert all(o[1].strip() for o in out)


def test_case_whitespace_and_emoji_rules():
    t = "Call me. Now! ok? fine"
    assert rb.upper(t) == t.upper() and rb.lower(t) == t.lower()
    w = rb.whitespace(t)
    assert w == "  Call  me.\nNow!\nok?\nfine \n"
    assert " ".join(w.split()) == t
    e = rb.emoji(t)
    assert e != t and e.split(" ", 1)[1].rsplit(" ", 1)[0] == t
    assert e[0] in "".join(rb.EMOJI_BEFORE) and rb.emoji(t) == e


def test_leetspeak_changes_letters_only_and_leaves_links_emails_digits():
    t = "Visit https://evri.parcel-hold.com/pay, mail sos@help.co.uk, or royalmail.com/track: code 123456 is SAFE"
    out = rb.leetspeak(t)
    assert out == ("V151t https://evri.parcel-hold.com/pay, m41l sos@help.co.uk, 0r royalmail.com/track: "
                   "c0d3 123456 15 54F3")
    assert rb.leetspeak("0123456789 £1.45") == "0123456789 £1.45"
    assert len(out) == len(t)


def test_modern_phone_and_link_rules():
    assert rb.modern("Call 09061701461 now") == "Call +44 7700 900 461 now"
    assert rb.modern("call 08000930705.") == "call +44 7700 900 705."
    # spaced numbers, short codes, international numbers and amounts stay
    for kept in ("call 0330 912 4455", "txt WIN to 87066", "ring +447700900123", "pay £1.45"):
        assert rb.modern(kept) == kept
    link = rb.short_link("www.example.com/win")
    assert re.fullmatch(r"https://bit\.ly/[0-9a-f]{7}", link)
    assert rb.modern("Go to www.example.com/win.") == f"Go to {link}."
    assert rb.modern("see royalmail.com/track, thanks") == f"see {rb.short_link('royalmail.com/track')}, thanks"
    assert rb.modern("at http://x.co/abc") == f"at {rb.short_link('http://x.co/abc')}"
    assert rb.modern("mail me at help@foo.co.uk") == "mail me at help@foo.co.uk"
    assert rb.modern("see you at 7. ok") == "see you at 7. ok"


# ----------------------------------------------------------------------------- eval
def _ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPTClassifier(TINY, 2).eval(), tmp_path / "spam",
                           metadata={"labels": list(LABELS), "max_length": 16, "temperature": 2.0})


def _data(tmp_path):
    ham = [("ham", f"see you at {i} o'clock, ok?") for i in range(12)]
    spam = [("spam", f"WINNER! claim prize {i} now, call 0906170{i:04d}") for i in range(6)]
    for set_name in ("natural", "balanced"):
        for split in ("train", "test"):
            write_split(ham + spam, tmp_path / "data" / set_name / f"{split}.csv")
    path = tmp_path / "challenge.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text", "category"])
        w.writerows([("spam", "Pay £1.45 at royalmail-redelivery.info", "parcel_fee"),
                     ("spam", "Hi mum new number, send £850", "family_impersonation"),
                     ("ham", "Your code is 482913. Don't share it", "otp_code"),
                     ("ham", "omw 5 mins", "family_friends"),
                     ("ham", "Your parcel is out for delivery today", "delivery_notice")])
    return path


def test_eval_reports_the_challenge_set_and_robustness(tmp_path, tokenizer, capsys):
    pytest.importorskip("sklearn")
    ck, challenge = _ckpt(tmp_path), _data(tmp_path)
    assert cli.main(["eval", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                     "--out", str(tmp_path / "out"), "--challenge", str(challenge), "--robustness"]) == 0
    printed = capsys.readouterr().out
    assert "challenge set" in printed and "per category" in printed and "robustness" in printed
    m = json.loads((tmp_path / "out/eval_metrics.json").read_text())
    c = m["challenge"]
    assert c["n"] == 5 and {"accuracy", "precision", "recall", "f1", "confusion"} <= set(c)
    assert {"ece_before", "ece_after", "brier_before", "brier_after", "bands"} <= set(c["calibration"])
    assert set(c["per_category"]) == {"parcel_fee", "family_impersonation", "otp_code", "family_friends", "delivery_notice"}
    assert sum(k["correct"] for k in c["per_category"].values()) == round(c["accuracy"] * 5)
    assert len(c["errors"]) == 5 - round(c["accuracy"] * 5)
    assert all({"label", "category", "p_spam", "text"} <= set(e) for e in c["errors"])
    assert (tmp_path / "out/reliability_challenge.png").stat().st_size > 1000
    r = m["robustness"]
    assert r["transforms"] == list(rb.TRANSFORMS) and set(r["sets"]) == {"natural", "challenge"}
    assert r["sets"]["natural"]["n"] == 18 and r["sets"]["challenge"]["n"] == 5
    assert r["sets"]["natural"]["clean"]["accuracy"] == m["natural"]["gpt2_classifier"]["accuracy"]
    assert r["sets"]["challenge"]["clean"]["accuracy"] == c["accuracy"]
    for name in rb.TRANSFORMS:
        v = r["sets"]["challenge"][name]
        assert 0 <= v["accuracy"] <= 1 and 0 <= v["flipped"] <= 5


def test_eval_defaults_to_the_bundled_challenge_and_can_skip_it(tmp_path, tokenizer, capsys):
    pytest.importorskip("sklearn")
    ck = _ckpt(tmp_path)
    _data(tmp_path)
    args = cli.build_parser().parse_args(["eval"])
    assert Path(args.challenge) == cli.CHALLENGE_FILE and not args.no_challenge and not args.robustness
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["eval", "--challenge", "x.csv", "--no-challenge"])
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                     "--out", str(tmp_path / "out"), "--no-challenge"]) == 0
    m = json.loads((tmp_path / "out/eval_metrics.json").read_text())
    assert "challenge" not in m and "robustness" not in m
    assert not (tmp_path / "out/reliability_challenge.png").exists()
    # a missing challenge file fails before any forward pass
    assert cli.main(["eval", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                     "--out", str(tmp_path / "out2"), "--challenge", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out2/eval_metrics.json").exists()
