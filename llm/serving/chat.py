"""The chat rules of the app: plain Python, no Chainlit, so every rule here is unit-tested.

Two modes share the serving runtime (`llm.serving.runtime`):
  "Spam check" -> one verdict per pasted line, or a labelled CSV for a file (with progress)
  "Assistant"  -> streamed answers from the batched engine, the previous exchange as history

`app.py` only wires these functions to Chainlit's handlers. Limits live in `llm.serving.limits`.
"""
from __future__ import annotations

import csv
import hmac
import io
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from llm.generate import GenerationSettings
from llm.messages_file import MessagesFileError, read_messages
from llm.serving.limits import (DEFAULT_MAX_NEW_TOKENS, FILE_MAX_BYTES, FILE_MAX_ROWS, HISTORY_EXCHANGES,
                                MAX_MESSAGE_CHARS, MAX_TEXTS, PASTE_MAX_CHARS)
from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID

SPAM_MODE = "Spam check"
ASSISTANT_MODE = "Assistant"
MODES = (SPAM_MODE, ASSISTANT_MODE)

UPLOAD_CHUNK = 64  # rows per classify call for files: progress after each, other users' work between them
UPLOAD_SPAM_SHOWN = 5  # spam rows listed in the chat under a file's summary (all of them are in the labelled CSV)

# Sampling defaults and slider ranges (min, max, step) of the Assistant's settings panel. The panel's values come
# from the browser, so the same ranges are enforced when they are read (`generation_settings`).
DEFAULT_SETTINGS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
SETTINGS_RANGES = {"temperature": (0.0, 1.5, 0.1), "top_k": (0, 200, 1), "top_p": (0.05, 1.0, 0.05),
                   "max_new_tokens": (16, 512, 16)}
MODEL_OF_MODE = {SPAM_MODE: SPAM_MODEL_ID, ASSISTANT_MODE: INSTRUCT_MODEL_ID}


class InputError(ValueError):
    """Input the app refuses, with a message for the user."""


def mode_for(profile: str | None) -> str:
    """The mode a chat profile selects (the first profile, Spam check, is the default)."""
    return profile if profile in MODES else SPAM_MODE


def unavailable_reply(error: Exception) -> str:
    return f"⚠️ **Model not available.**\n\n{error}\n\nThe app keeps running; send your message again once it exists."


def loading_notice(mode: str) -> str:
    return (f"⏳ The {mode} model is still loading (it loads once, when the server starts). "
            "Type your message now: it is answered as soon as the model is ready.")


def busy_notice(place: int) -> str:
    return (f"⏳ Busy: every slot is answering someone else, and you are number {place} in the queue. "
            "Your answer starts here when its turn comes.")


# --------------------------------------------------------------------------- spam check
BAND_ICONS = {"spam": "🔴", "likely spam": "🟠", "unsure": "🟡", "ham": "🟢"}


def format_verdict(label: str, p_spam: float, band: str | None = None, threshold: float | None = None) -> str:
    """E.g. "🔴 **Spam — 97.3%** spam probability"; the colour is the visual cue.

    With a band (llm.spam.band_of) the verdict names it: "🟠 **Likely spam — 72.0%** ...", and "unsure" says which
    way it was counted. Probabilities never read "100.0%" or "0.0%", nor round onto the threshold the label was
    decided at (llm.spam.format_probability)."""
    from llm.spam import format_probability

    if band is None:
        band = "spam" if label == "spam" else "ham"
    icon = BAND_ICONS.get(band, "🔴" if label == "spam" else "🟢")
    note = f" (counted as {label})" if band == "unsure" else ""
    return f"{icon} **{band.capitalize()} — {format_probability(p_spam, threshold)}** spam probability{note}"


def split_messages(text: str) -> list[str]:
    """One message per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_spam_text(text: str) -> list[str]:
    """The messages of one paste, or InputError saying what is wrong."""
    if not text or not text.strip():
        raise InputError("Paste an SMS message to check (one message per line for several), or attach a CSV/TXT file.")
    if len(text) > PASTE_MAX_CHARS:
        raise InputError(f"That paste has {len(text):,} characters; one paste may have at most {PASTE_MAX_CHARS:,}. "
                         "Upload a CSV or TXT file instead (one message per line).")
    messages = split_messages(text)
    if len(messages) > MAX_TEXTS:
        raise InputError(f"That paste has {len(messages):,} lines; at most {MAX_TEXTS:,} are classified at once. "
                         "Upload a CSV or TXT file for more.")
    return messages


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:=&])")


# The renderer turns any "http://", "https://" or "www." in plain text into a link, escaped or not: a word joiner
# (U+2060, invisible) inside each keeps a scam's address from becoming clickable in the bot's reply.
URL_START = re.compile(r"(?i)(https?:)(//)|\b(www)(\.)")


def literal(text: str, n: int | None = None) -> str:
    """User text (a message, a word, a file name) as Markdown that shows it as typed: cut to n characters first,
    then every Markdown character escaped, so it never becomes a link, an image, a table cell break or emphasis
    (a scam's URL is shown, not made clickable); line breaks become spaces."""
    text = " ".join(text.split())
    if n is not None and len(text) > n:
        text = text[: n - 1] + "…"
    text = URL_START.sub(lambda m: "\u2060".join(g for g in m.groups() if g), text)
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


@dataclass
class Reply:
    """A reply's text and what it is about, stored with the message (step metadata) so that history can be
    resumed and feedback exported exactly: VERDICT_KIND {texts, labels, p_spam} or ANSWER_KIND {instruction}."""
    content: str
    metadata: dict


VERDICT_KIND, ANSWER_KIND = "spam_verdict", "answer"


async def spam_reply(runtime, text: str) -> Reply:
    """The reply to a paste: one verdict, or a table when several lines are classified together."""
    messages = check_spam_text(text)
    results = await runtime.verdicts(messages)
    metadata = {"kind": VERDICT_KIND, "texts": messages, "labels": [v.label for v in results],
                "p_spam": [round(v.p_spam, 6) for v in results]}
    if len(messages) == 1:
        return Reply(format_verdict(*results[0]), metadata)
    n_spam = sum(v.label == "spam" for v in results)
    return Reply("\n".join([f"**{len(messages)} messages: {n_spam} spam, {len(messages) - n_spam} ham**", "",
                            *verdict_table([(i, m, v) for i, (m, v) in enumerate(zip(messages, results), start=1)])]),
                 metadata)


def verdict_table(rows) -> list[str]:
    """Markdown lines of a verdict table; rows are (number, message, verdict tuple)."""
    return ["| # | verdict | message |", "|---|---|---|", *(f"| {i} | {format_verdict(*v)} | {literal(m, 60)} |" for i, m, v in rows)]


EXPLAIN_SHOWN = 3  # words shown each way under a verdict
EXPLAIN_MIN_EFFECT = 0.005  # smaller effects (half a percentage point) are noise, not a reason


def explanation_text(explanation) -> str:
    """The words under a verdict: "Why: towards spam **prize** +41 pts, ...; towards ham **dinner** −3 pts"."""
    def words(pairs):
        return ", ".join(f"**{literal(w, 24)}** {d * 100:+.0f} pts".replace(" -", " −") for w, d in pairs
                         if abs(d) >= EXPLAIN_MIN_EFFECT)  # a minus sign for the effect, the word's hyphens kept
    spam, ham = words(explanation.towards_spam(EXPLAIN_SHOWN)), words(explanation.towards_ham(EXPLAIN_SHOWN))
    parts = [f"⬆️ towards spam: {spam}" if spam else "", f"⬇️ towards ham: {ham}" if ham else ""]
    if not any(parts):
        return "_Why: no single word moves this verdict by half a point or more._"
    return "_Why_ (the change in spam probability without each word): " + " · ".join(p for p in parts if p)


async def explain_reply(runtime, text: str) -> str | None:
    """For a paste of one message, the words that drove its verdict (occlusion, scored by the engine); else None."""
    messages = check_spam_text(text)
    if len(messages) != 1:
        return None
    return explanation_text((await runtime.explain(messages))[0])


# --------------------------------------------------------------------------- spam check: files
@dataclass
class FileResult:
    csv_bytes: bytes
    filename: str
    n_rows: int
    n_spam: int
    summary: str = ""


def read_upload(name: str, data: bytes) -> tuple[list[str], list[dict[str, str | None]], list[str]]:
    """(messages, original rows, original columns) of an uploaded CSV, TSV or TXT, or InputError.

    The rules are llm.messages_file's, shared with `python -m finetune.spam predict --file`; the app adds its limits."""
    try:
        return read_messages(name, data, max_bytes=FILE_MAX_BYTES, max_rows=FILE_MAX_ROWS)
    except MessagesFileError as e:
        raise InputError(str(e)) from None


def empty_upload_error(name: str) -> str:
    return (f"{name} is empty: there is nothing in it to classify. Attach a TXT file with one message per line, or "
            "a CSV with a text column.")


Progress = Callable[[int, int, float], Awaitable[None]]  # (rows done, rows in all, seconds left)


async def classify_upload(runtime, name: str, data: bytes, progress: Progress | None = None) -> FileResult:
    """Classify every row of a CSV/TXT upload; returns a CSV with `label` and `spam_probability` added.

    Rows go to the engine UPLOAD_CHUNK at a time, so other users' requests run in between and
    `progress` is told after each chunk. Cancelling the calling task (Stop) ends it there."""
    messages, rows, columns = read_upload(name, data)
    todo = [i for i, m in enumerate(messages) if m]
    verdicts: dict[int, tuple[str, float]] = {}
    start = time.monotonic()
    for first in range(0, len(todo), UPLOAD_CHUNK):
        chunk = todo[first:first + UPLOAD_CHUNK]
        verdicts.update(zip(chunk, await runtime.classify([messages[i] for i in chunk])))
        if progress:
            done = len(verdicts)
            await progress(done, len(todo), (time.monotonic() - start) / done * (len(todo) - done))
    out = io.StringIO()
    # A file that already has a `label` column (labelled data, the UCI layout) keeps it: ours is then `predicted_label`.
    label_col = "predicted_label" if "label" in columns else "label"
    fieldnames = (columns or ["text"]) + [label_col, "spam_probability"]
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for i, (message, row) in enumerate(zip(messages, rows)):
        label, p = verdicts.get(i, ("", None))
        writer.writerow({**(row if columns else {"text": message}), label_col: label,
                         "spam_probability": "" if p is None else f"{p:.4f}"})
    n_spam = sum(label == "spam" for label, _ in verdicts.values())
    stem = Path(name).stem
    spam_rows = sorted((i for i, (label, _) in verdicts.items() if label == "spam"), key=lambda i: -verdicts[i][1])
    shown = [(i + 1, messages[i], verdicts[i]) for i in spam_rows[:UPLOAD_SPAM_SHOWN]]
    more = f"\n\n…and {plural(len(spam_rows) - len(shown), 'more spam row')} in the file." if len(spam_rows) > len(shown) else ""
    summary = (f"**{literal(stem)}**: {plural(len(verdicts), 'message')} classified — {n_spam:,} spam, "
               f"{len(verdicts) - n_spam:,} ham"
               + (f" ({plural(len(messages) - len(verdicts), 'empty row')} skipped)" if len(verdicts) < len(messages) else "")
               + (("\n\nMost likely spam (row, verdict, message):\n\n" + "\n".join(verdict_table(shown)) + more) if shown else "")
               + f"\n\nEvery row with its label: **{literal(stem)}-labelled.csv** below.")
    return FileResult(out.getvalue().encode("utf-8"), f"{stem}-labelled.csv", len(verdicts), n_spam, summary)


# --------------------------------------------------------------------------- assistant
def check_instruction(text: str) -> str:
    if not text or not text.strip():
        raise InputError("Type an instruction or a question, e.g. “Rewrite this sentence in passive voice: …”.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InputError(f"That message has {len(text):,} characters; the assistant reads at most "
                         f"{MAX_MESSAGE_CHARS:,} (its context window is 1,024 tokens). Shorten it and send it again.")
    return text.strip()


def panel_settings(chat_settings: dict | None) -> dict:
    """The settings panel's values: each valid number clamped to its slider, anything else its default."""
    s = dict(DEFAULT_SETTINGS)
    for key, (low, high, _) in SETTINGS_RANGES.items():
        value = (chat_settings or {}).get(key) if isinstance(chat_settings, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            s[key] = min(max(value, low), high)
    return s


def generation_settings(chat_settings: dict | None) -> GenerationSettings:
    """GenerationSettings from the Assistant's settings panel; 0 top-k and 1.0 top-p mean "off".

    A value that is not a number (or not finite) falls back to its default, one outside the slider is clamped:
    whatever a client sends, the sampler gets valid settings."""
    s = panel_settings(chat_settings)
    top_k, top_p = int(s["top_k"]), float(s["top_p"])
    return GenerationSettings(max_new_tokens=int(s["max_new_tokens"]), temperature=float(s["temperature"]),
                              top_k=top_k if top_k > 0 else None, top_p=top_p if 0 < top_p < 1 else None)


@dataclass
class Conversation:
    """The earlier exchanges of one chat, carried into the next prompt (the model drops the oldest
    ones when they do not fit its context)."""
    exchanges: list[tuple[str, str]] = field(default_factory=list)
    keep: int = HISTORY_EXCHANGES

    def history(self) -> list[tuple[str, str]]:
        return list(self.exchanges[-self.keep:]) if self.keep else []

    def add(self, instruction: str, response: str) -> None:
        if response.strip():
            self.exchanges = (self.exchanges + [(instruction, response)])[-max(self.keep, 1):]


async def open_answer(runtime, text: str, settings: GenerationSettings, conversation: Conversation):
    """Queue the assistant's answer to `text` (after the conversation's history); returns the engine's Stream.

    A long message makes room by asking for fewer new tokens (clamp), never by cutting the question.
    Raises InputError (bad text), ContextOverflow (the message alone fills the context), ModelUnavailable,
    or EngineBusy (the queue is full)."""
    return await runtime.answer(check_instruction(text), conversation.history(), settings=settings, clamp=True,
                                history_if_trained=True)


CHAINLIT_STOP_TEXT = "Task manually stopped."  # what Chainlit 2.12 posts on Stop (chainlit/socket.py)


def stopped_answer(partial: str) -> str:
    return f"{partial.rstrip()} …\n\n_⏹️ Stopped._" if partial.strip() else "_⏹️ Stopped before the first word._"


def answer_metadata(instruction: str) -> dict:
    return {"kind": ANSWER_KIND, "instruction": instruction.strip()}


def is_finished_answer(metadata) -> bool:
    """An Assistant answer that ran to its end (the app marks one cut by Stop, or empty, as stopped): only such
    answers are history for the model and training data (finetune/feedback.py)."""
    return isinstance(metadata, dict) and metadata.get("kind") == ANSWER_KIND and not metadata.get("stopped")


def is_chainlit_stop_notice(step: dict) -> bool:
    return step.get("type") == "assistant_message" and (step.get("output") or "").strip() == CHAINLIT_STOP_TEXT


def resumed_conversation(steps: list[dict]) -> Conversation:
    """The Assistant's earlier exchanges of a stored thread, oldest first (answers carry their instruction). Stopped or
    empty answers are left out, as in the live chat."""
    conversation = Conversation()
    for step in sorted(steps, key=lambda s: s.get("createdAt") or ""):
        meta = step.get("metadata") or {}
        if is_finished_answer(meta):
            conversation.add(str(meta.get("instruction", "")), str(step.get("output") or ""))
    return conversation


def resumed_mode(thread: dict) -> str:
    """The mode a stored thread was in: its saved chat profile, else what its replies were."""
    profile = (thread.get("metadata") or {}).get("chat_profile") if isinstance(thread.get("metadata"), dict) else None
    if profile in MODES:
        return profile
    kinds = {(s.get("metadata") or {}).get("kind") for s in thread.get("steps") or [] if isinstance(s.get("metadata"), dict)}
    return ASSISTANT_MODE if ANSWER_KIND in kinds else SPAM_MODE


def progress_text(name: str, done: int, total: int, seconds_left: float) -> str:
    eta = f"about {seconds_left:.0f} s left" if seconds_left >= 1 else "almost done"
    return f"⏳ **{literal(name)}**: {done:,} / {total:,} messages classified ({done / total:.0%}), {eta}. Press Stop to cancel."


# --------------------------------------------------------------------------- who is talking
LOGIN_USER_ENV, LOGIN_PASSWORD_ENV, LOGIN_USERS_ENV = "LLM_APP_USER", "LLM_APP_PASSWORD", "LLM_APP_USERS"
LOCAL_USER = "local"  # the one identity of an app with history and no passwords (a laptop)
AUTH_SECRET_ENV, AUTH_SECRET_FILE = "CHAINLIT_AUTH_SECRET", Path("data/.chainlit_auth_secret")
AUTH_BASE_ENV = "LLM_AUTH_BASE_SECRET"  # the operator's or the file's secret, before the login set-up is mixed in


def login_users() -> dict[str, str]:
    """user -> password: $LLM_APP_USERS ("ana:pw1,ben:pw2") and/or $LLM_APP_USER (default admin) + $LLM_APP_PASSWORD."""
    users = {}
    for pair in os.environ.get(LOGIN_USERS_ENV, "").split(","):
        name, sep, password = pair.strip().partition(":")
        if sep and name.strip() and password:
            users[name.strip()] = password
    if os.environ.get(LOGIN_PASSWORD_ENV):
        users[os.environ.get(LOGIN_USER_ENV, "admin")] = os.environ[LOGIN_PASSWORD_ENV]
    return users


def login_enabled() -> bool:
    """Password login is on when $LLM_APP_PASSWORD or $LLM_APP_USERS names at least one user."""
    return bool(login_users())


def check_login(username: str, password: str) -> bool:
    ok = False
    for user, expected in login_users().items():  # compare with every entry: no timing hint of which names exist
        ok |= hmac.compare_digest(username.encode(), user.encode()) & hmac.compare_digest(password.encode(), expected.encode())
    return bool(ok)


def ensure_auth_secret(path: Path = AUTH_SECRET_FILE) -> None:
    """Chainlit signs its login tokens with $CHAINLIT_AUTH_SECRET. The secret used is derived from a base secret (the
    variable as the operator set it, else a random one kept in `path`, created once, owner-only) AND from who may log
    in (the local identity, or the user:password list): turning passwords on, or removing a user, makes every token
    signed before unusable, instead of letting a 15-day token of the old set-up in."""
    import hashlib
    import secrets
    base = os.environ.get(AUTH_BASE_ENV) or os.environ.get(AUTH_SECRET_ENV)
    if not base:
        path = Path(path)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            if not path.exists():
                tmp.replace(path)
            else:  # another instance made it first: use theirs
                tmp.unlink()
        base = path.read_text().strip()
    os.environ[AUTH_BASE_ENV] = base
    who = sorted(f"{u}:{hashlib.sha256(p.encode()).hexdigest()}" for u, p in login_users().items()) or [LOCAL_USER]
    os.environ[AUTH_SECRET_ENV] = hmac.new(base.encode(), "\n".join(who).encode(), hashlib.sha256).hexdigest()