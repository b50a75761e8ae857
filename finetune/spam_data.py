"""The spam classifier's data: the UCI collection split two ways (`prepare`), the synthetic messages of today's
kinds (finetune/sms_synth.py) and the authored ones (finetune/data/sms_authored.csv) that training adds, extra
labelled files (`--extra-train`, `--extra-validation`) and the validation mix."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from finetune.sms_synth import generate
from llm.spam import LABELS, SpamDataError, deduplicate, fetch_data, make_splits, read_collection, read_split, write_split

DATA_DIR = "data/sms_spam"
# Messages of today written for training by eight independent authors, each with a train/validation split:
# provenance and rules in finetune/data/README.md.
AUTHORED_FILE = Path(__file__).resolve().parent / "data" / "sms_authored.csv"


MIN_PER_LABEL = 10  # messages of each label a collection needs for splits (70/10/20) that all hold both labels


def prepare(sms_data: str | None, data_dir: str | Path = DATA_DIR, quiet: bool = False) -> dict:
    src = fetch_data(sms_data, data_dir)
    rows = read_collection(src)
    unique, dropped = deduplicate(rows)
    per_label = {lab: sum(r[0] == lab for r in unique) for lab in LABELS}
    if min(per_label.values()) < MIN_PER_LABEL:  # checked before anything is written: good splits stay
        raise SpamDataError(f"{src} has {per_label['ham']} ham and {per_label['spam']} spam messages (deduplicated): "
                            f"too few for train/validation/test splits with both labels in each (at least "
                            f"{MIN_PER_LABEL} of each). Nothing was written. Point --sms-data (or $LLM_SPAM_DATA) at "
                            "the SMS Spam Collection.")
    sets = make_splits(unique)
    counts = {}
    for set_name, splits in sets.items():
        for split, items in splits.items():
            write_split(items, Path(data_dir) / set_name / f"{split}.csv")
            counts[f"{set_name}/{split}"] = {lab: sum(r[0] == lab for r in items) for lab in LABELS}
    summary = {"source": str(src), "messages": len(rows), "duplicates_dropped": dropped, "unique": len(unique), "splits": counts}
    if not quiet:
        print(f"{src}: {len(rows)} messages, {dropped} exact duplicates dropped, {len(unique)} left")
        for name, c in counts.items():
            print(f"  {name:22s} ham {c['ham']:5d}  spam {c['spam']:4d}  -> {Path(data_dir) / name}.csv")
    return summary


def synthetic_rows(per_category: int, seed: int) -> list[tuple[str, str]]:
    """The (label, text) rows finetune/sms_synth.py writes for training (none when per_category is 0)."""
    return [(label, text) for label, text, _ in generate(per_category, seed)] if per_category else []


def authored_rows(split: str) -> list[tuple[str, str]]:
    """The (label, text) rows of finetune/data/sms_authored.csv in `split` ("train" or "validation")."""
    with open(AUTHORED_FILE, newline="", encoding="utf-8") as f:
        return [(r["label"], r["text"]) for r in csv.DictReader(f) if r["split"] == split]


def read_labelled(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) rows of an extra training CSV with columns label,text (e.g. finetune.feedback's export)."""
    path = Path(path)
    if not path.is_file():
        raise SpamDataError(f"{path} does not exist. --extra-train takes a CSV with columns label,text "
                            "(python -m finetune.feedback export writes one).")
    try:
        rows = read_split(path)
    except (KeyError, UnicodeDecodeError, csv.Error) as e:
        raise SpamDataError(f"{path} is not a UTF-8 CSV with columns label,text ({type(e).__name__}: {e})") from None
    bad = [i + 2 for i, (lab, text) in enumerate(rows) if lab not in LABELS or not (text or "").strip()]
    if bad:
        raise SpamDataError(f"{path}: line {', '.join(map(str, bad[:10]))}: the label must be ham or spam and the text non-empty")
    return rows


def validation_rows(data_dir: Path, per_category: int, seed: int, authored: bool = False,
                    extra: Sequence[str | Path] = ()) -> list[tuple[str, str]]:
    """The split's validation messages plus a fifth as many synthetic ones per category as training had (another
    seed), with `authored` the authored messages kept for validation, and the `extra` labelled files: the best
    checkpoint, the temperature and the threshold are chosen on this mix, so they answer for today's messages too,
    not only for 2010's."""
    rows = read_split(data_dir / "validation.csv") + (authored_rows("validation") if authored else [])
    for path in extra:
        rows += read_labelled(path)
    if per_category:
        seen = {t.lower() for _, t in synthetic_rows(per_category, seed)}
        rows += [r for r in synthetic_rows(max(1, per_category // 5), seed + 1) if r[1].lower() not in seen]
    return rows
