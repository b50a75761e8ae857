"""Turn what users told the app (thumbs up/down, comments) into training data.

    python -m finetune.feedback export [--database URL] [--out-dir data/feedback] [--include-confirmed]

Reads the app's history database ($LLM_DATABASE_URL, default sqlite+aiosqlite:///data/chat.db) and writes:

  spam_corrections.csv   label,text,was,comment: every single-message spam verdict marked 👎, with the label
                         flipped (the user says the model was wrong); with --include-confirmed also the 👍 ones,
                         label kept. Train on it with:
                           python -m finetune.spam train --extra-train data/feedback/spam_corrections.csv
                         (A 👎 on a reply that judged several pasted lines at once says not which line was
                         wrong: those are counted and skipped.)
  preferences.json       the book's preference format, [{"instruction", "input", "output", "chosen",
                         "rejected"}], one record per Assistant answer marked 👎 that has a better answer:
                         the 👎 comment when it starts with "Better:" (the answer the user wanted), else a 👍 answer to the
                         same instruction, else a later answer to it in the same chat that was not marked 👎
                         (the user asked again). `rejected` is the 👎 answer. Answers cut by Stop are never
                         used. Preference tuning reads it.

The loop: users rate -> export -> train (spam: --extra-train; assistant: preference tuning) -> serve the new
checkpoint with LLM_SPAM_CHECKPOINT / LLM_INSTRUCT_CHECKPOINT.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

from finetune.cli import cli_main
from llm.serving.chat import ANSWER_KIND, VERDICT_KIND, is_finished_answer

DEFAULT_OUT = "data/feedback"


class FeedbackError(Exception):
    pass


async def read_rated_replies(url: str) -> list[dict]:
    """Every assistant reply of the database that has a kind (verdict or answer), oldest first, with its
    feedback value (1 👍, 0 👎, None not rated) and comment."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from llm.serving.history import decode_json

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                'SELECT s."id" AS id, s."threadId" AS thread, s."output" AS output, s."metadata" AS metadata, '
                's."createdAt" AS created, f."value" AS value, f."comment" AS comment '
                # Chainlit's web client rates the `on_message` run that holds the reply (with cot = "full"), or the
                # reply itself: either way the feedback belongs to the reply
                'FROM steps s LEFT JOIN feedbacks f ON f."forId" = s."id" OR f."forId" = s."parentId" '
                'WHERE s."type" = \'assistant_message\' ORDER BY s."createdAt"'))).mappings().all()
    finally:
        await engine.dispose()
    out = []
    for r in rows:
        meta = decode_json(r["metadata"])
        if isinstance(meta, dict) and meta.get("kind") in (VERDICT_KIND, ANSWER_KIND):  # what the app stores per reply
            out.append({**dict(r), "id": str(r["id"]), "thread": str(r["thread"]), "metadata": meta})
    return out


def spam_corrections(replies: Sequence[dict], include_confirmed: bool = False) -> tuple[list[dict], int]:
    """(rows label,text,was,comment; how many 👎 verdicts were skipped because they covered several messages)."""
    rows, ambiguous = [], 0
    for r in replies:
        meta = r["metadata"]
        if meta["kind"] != VERDICT_KIND or r["value"] is None or (r["value"] == 1 and not include_confirmed):
            continue
        texts, labels = meta.get("texts") or [], meta.get("labels") or []
        if len(texts) != 1 or len(labels) != 1:
            ambiguous += r["value"] == 0
            continue
        was = labels[0]
        label = was if r["value"] == 1 else ("ham" if was == "spam" else "spam")
        rows.append({"label": label, "text": texts[0], "was": was, "comment": (r["comment"] or "").strip()})
    return rows, ambiguous


def _key(instruction: str) -> str:
    return " ".join(instruction.lower().split())


BETTER = "better:"  # a 👎 comment that starts with this gives the answer the user wanted ("Better: Paris.")


def better_answer(comment: str | None) -> str | None:
    """The corrected answer in a 👎 comment ("Better: ..."); a plain remark ("too long") is not an answer."""
    text = (comment or "").strip()
    return text[len(BETTER):].strip() or None if text.lower().startswith(BETTER) else None


def preferences(replies: Sequence[dict]) -> tuple[list[dict], int]:
    """(preference records; 👎 answers left out for want of a better answer)."""
    answers = [r for r in replies if is_finished_answer(r["metadata"]) and (r["output"] or "").strip()]  # Stop-cut: neither
    liked: dict[str, str] = {}
    for r in answers:
        if r["value"] == 1:
            liked.setdefault(_key(r["metadata"].get("instruction", "")), r["output"])
    records, unpaired = [], 0
    for i, r in enumerate(answers):
        if r["value"] != 0:
            continue
        instruction = str(r["metadata"].get("instruction", "")).strip()
        key = _key(instruction)
        later = [a["output"] for a in answers[i + 1:] if a["thread"] == r["thread"] and a["value"] != 0
                 and _key(a["metadata"].get("instruction", "")) == key and a["output"] != r["output"]]
        chosen = better_answer(r["comment"]) or liked.get(key) or (later[0] if later else None)
        if not instruction or not chosen or chosen == r["output"]:
            unpaired += 1
            continue
        records.append({"instruction": instruction, "input": "", "output": chosen, "chosen": chosen, "rejected": r["output"]})
    return records, unpaired


def export(url: str, out_dir: str | Path, include_confirmed: bool = False) -> dict:
    try:
        replies = asyncio.run(read_rated_replies(url))
    except Exception as e:  # noqa: BLE001 - a missing file, a server that is down, a database without the schema
        raise FeedbackError(f"cannot read the history database {url.split('@')[-1]}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}. Pass --database URL or set LLM_DATABASE_URL "
                            "to the app's database.") from None
    spam_rows, ambiguous = spam_corrections(replies, include_confirmed)
    prefs, unpaired = preferences(replies)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spam_path, pref_path = out / "spam_corrections.csv", out / "preferences.json"
    tmp = spam_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["label", "text", "was", "comment"])
        w.writeheader()
        w.writerows(spam_rows)
    tmp.replace(spam_path)
    tmp = pref_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(prefs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(pref_path)
    rated = sum(r["value"] is not None for r in replies)
    summary = {"rated_replies": rated, "spam_rows": len(spam_rows), "spam_skipped_several_messages": ambiguous,
               "preferences": len(prefs), "answers_without_a_better_one": unpaired,
               "spam_file": str(spam_path), "preference_file": str(pref_path)}
    print(f"{rated} rated replies -> {len(spam_rows)} spam rows in {spam_path}"
          f"{f' ({ambiguous} 👎 on several messages at once skipped)' if ambiguous else ''}; "
          f"{len(prefs)} preference records in {pref_path}"
          f"{f' ({unpaired} 👎 answers had no better answer to pair with)' if unpaired else ''}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    from llm.serving.history import DATABASE_ENV, DEFAULT_DATABASE
    p = argparse.ArgumentParser(prog="python -m finetune.feedback", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the feedback as spam training rows and preference records")
    ex.add_argument("--database", default=None, help=f"the app's database URL (default: ${DATABASE_ENV}, else {DEFAULT_DATABASE})")
    ex.add_argument("--out-dir", default=DEFAULT_OUT, help=f"where the two files go (default: {DEFAULT_OUT})")
    ex.add_argument("--include-confirmed", action="store_true", help="also export 👍 spam verdicts, label kept")
    ex.set_defaults(func=cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), argv, (FeedbackError,))


def cmd_export(args: argparse.Namespace) -> int:
    import os

    from llm.serving.history import DATABASE_ENV, DEFAULT_DATABASE
    export(args.database or os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE, args.out_dir, args.include_confirmed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
