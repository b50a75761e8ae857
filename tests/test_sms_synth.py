"""The messages of today that training adds: the synthetic ones (finetune/sms_synth.py: complete, reproducible,
label-blind styling) and the authored ones (finetune/data/sms_authored.csv), both kept apart from the challenge sets."""
from __future__ import annotations

import csv
import hashlib
import random
import re

import pytest

from finetune import sms_synth
from finetune.robustness import URL_RE
from finetune.sms_templates import HAM_TEMPLATES, SPAM_TEMPLATES
from finetune.spam_data import AUTHORED_FILE, authored_rows, synthetic_rows, validation_rows
from finetune.spam_eval import CHALLENGE_FILE, read_challenge
from llm.spam import write_split


def test_every_category_gets_its_count_and_the_same_seed_gives_the_same_messages():
    rows = sms_synth.generate(5, seed=3)
    assert rows == sms_synth.generate(5, seed=3) and rows != sms_synth.generate(5, seed=4)
    counts = {}
    for label, _, category in rows:
        counts[(label, category)] = counts.get((label, category), 0) + 1
    expected = {("spam", c): 5 for c in SPAM_TEMPLATES} | {("ham", c): 5 for c in HAM_TEMPLATES}
    assert counts == expected
    assert len({t.lower() for _, t, _ in rows}) == len(rows)  # no duplicates


def test_every_template_expands_completely():
    rng = random.Random(0)
    for templates in (*SPAM_TEMPLATES.values(), *HAM_TEMPLATES.values()):
        for template in templates:
            for _ in range(20):
                text = sms_synth.expand(template, rng)
                assert not re.search(r"[{}\[\]]", text), (template, text)
                assert text == text.strip() and "  " not in text


def test_a_slot_named_twice_has_one_value():
    rng = random.Random(1)
    for _ in range(20):
        a, b = sms_synth.expand("{courier} and {courier}", rng).split(" and ")
        assert a == b


def test_noise_keeps_links_and_is_off_at_probability_zero():
    rng = random.Random(0)
    text = "Your parcel is held, pay at https://example-pay.info/x today"
    assert sms_synth.noisy(text, rng, 0.0) == text
    for _ in range(50):
        leet = sms_synth.NOISES["leetspeak"](text, rng)
        assert "https://example-pay.info/x" in leet and len(leet) == len(text)
    modern = sms_synth.NOISES["modern"]("call 09061701461 or see www.win.com now", rng)
    assert "09061701461" not in modern and "www.win.com" not in modern and URL_RE.search(modern)


def _eight_word_runs(text: str) -> list[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9£$€']+", text.lower())
    return [tuple(words[i:i + 8]) for i in range(len(words) - 7)]


# Challenge messages allowed to share a run of eight words with the default synthetic messages (sha256 of the text,
# first 12 hex digits): none for the sets written by the templates' author; a few for the blind sets 3-6, whose
# independent authors converged on the same stock phrases (finetune/data/README.md quotes set 3's). No other message
# may join them, and none may share one with the authored training messages (those that did were left out).
SHARED_EIGHT_WORD_RUNS = {"sms_challenge.csv": set(), "sms_challenge_2.csv": set(),
                          "sms_challenge_3.csv": {"132f65d108ed", "326a4a6ab81b", "3fc7d180bf46", "5ee6cc370eb9"},
                          "sms_challenge_4.csv": {"3c16a8f2a66d", "e3b7f5709025", "f7fa468ae6ec"},
                          "sms_challenge_5.csv": {"94fd447960d8"},
                          "sms_challenge_6.csv": {"bb6765103d3a", "dfa968c282db"}, "sms_challenge_7.csv": set()}


def test_every_challenge_set_is_checked_for_shared_runs():
    assert set(SHARED_EIGHT_WORD_RUNS) == {p.name for p in CHALLENGE_FILE.parent.glob("sms_challenge*.csv")}


@pytest.mark.parametrize("name", sorted(SHARED_EIGHT_WORD_RUNS))
def test_training_messages_do_not_reproduce_the_challenge_sets(name):
    """The challenge sets are held out: what training adds (synthetic at the default size, both seeds, and the
    authored messages) must not reproduce them."""
    challenge = [text for _, text, _ in read_challenge(CHALLENGE_FILE.with_name(name))]
    runs: dict[tuple, set[str]] = {}
    for text in challenge:
        for run in _eight_word_runs(text):
            runs.setdefault(run, set()).add(text)
    authored = authored_rows("train") + authored_rows("validation")
    assert not {c for _, t in authored for run in _eight_word_runs(t) for c in runs.get(run, ())}
    assert not {t.lower() for _, t in authored} & {t.lower() for t in challenge}
    made = synthetic_rows(40, 123) + synthetic_rows(8, 124)
    involved = {c for _, t in made for run in _eight_word_runs(t) for c in runs.get(run, ())}
    unexpected = [t for t in involved if hashlib.sha256(t.encode()).hexdigest()[:12] not in SHARED_EIGHT_WORD_RUNS[name]]
    assert not unexpected, unexpected[:3]
    assert not {t.lower() for _, t in made} & {t.lower() for t in challenge}


def test_validation_gets_a_fifth_as_many_synthetic_messages_none_seen_in_training(tmp_path):
    write_split([("ham", "see you at 7"), ("spam", "WIN cash now")], tmp_path / "validation.csv")
    assert validation_rows(tmp_path, 0, 123) == [("ham", "see you at 7"), ("spam", "WIN cash now")]
    assert validation_rows(tmp_path, 0, 123, authored=True)[2:] == authored_rows("validation")
    rows = validation_rows(tmp_path, 10, 123)
    train = {t.lower() for _, t in synthetic_rows(10, 123)}
    extra = rows[2:]
    assert 0 < len(extra) <= 2 * (len(SPAM_TEMPLATES) + len(HAM_TEMPLATES))
    assert not {t.lower() for _, t in extra} & train


def test_cli_writes_a_csv(tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert sms_synth.main(["--per-category", "2", "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (len(SPAM_TEMPLATES) + len(HAM_TEMPLATES))
    assert {r["label"] for r in rows} == {"ham", "spam"}
    with pytest.raises(SystemExit):
        sms_synth.main(["--per-category", "0"])


def test_authored_messages_are_balanced_per_author_split_and_new():
    """finetune/data/sms_authored.csv: eight authors, half spam each, a validation fifth, no duplicates, one label per
    category, and its README table matches."""
    import collections

    with open(AUTHORED_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 1600 and len({r["author"] for r in rows}) == 8
    assert {r["split"] for r in rows} == {"train", "validation"}
    for author in {r["author"] for r in rows}:
        mine = [r for r in rows if r["author"] == author]
        assert 0.4 <= sum(r["label"] == "spam" for r in mine) / len(mine) <= 0.6, author
        assert 0.15 <= sum(r["split"] == "validation" for r in mine) / len(mine) <= 0.25, author
    assert len({r["text"].strip().lower() for r in rows}) == len(rows), "duplicate messages"
    labels = collections.defaultdict(set)
    for r in rows:
        labels[r["category"]].add(r["label"])
    assert all(len(v) == 1 for v in labels.values()) and {lab for v in labels.values() for lab in v} == {"ham", "spam"}
    readme = (AUTHORED_FILE.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## `sms_authored.csv`"):]
    for author, n in collections.Counter(r["author"] for r in rows).items():
        assert re.search(rf"`{author}`\s*\|[^\n]*\|\s*{n}\s*\|", section), f"{author} ({n}) not in the README"


def test_authored_messages_are_not_in_the_uci_collection():
    import os
    from pathlib import Path

    from llm.spam import read_collection

    src = Path(os.environ.get("LLM_SPAM_DATA") or "")
    if not src.is_file():
        pytest.skip("SMSSpamCollection not available: set LLM_SPAM_DATA")
    known = {text.strip().lower() for _, text in read_collection(src)}
    assert not [t for _, t in authored_rows("train") + authored_rows("validation") if t.strip().lower() in known]
