"""The app's mode router: plain Python, no Chainlit, so every rule here is unit-tested.

Two modes share the GPT-2 backbone:
  "Spam check" -> `llm.spam.SpamClassifier`: one verdict per pasted line, or a labelled CSV for a file.
  "Assistant"  -> `llm.instruct.InstructionModel`: streamed answers, the previous exchange as history.

`app.py` only wires these functions to Chainlit's handlers.
"""
from __future__ import annotations

import asyncio
import csv
import hmac
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from llm.generate import GenerationSettings
from llm.spam import SpamDataError, read_csv_messages

SPAM_MODE = "Spam check"
ASSISTANT_MODE = "Assistant"
MODES = (SPAM_MODE, ASSISTANT_MODE)

SPAM_MAX_CHARS = 20_000  # one paste in Spam check (many lines); longer: upload a file
SPAM_MAX_LINES = 500  # messages classified from one paste
ASSISTANT_MAX_CHARS = 4_000  # about 1,000 tokens: more would not fit GPT-2's 1,024-token context
FILE_MAX_ROWS = 20_000
FILE_MAX_BYTES = 5 * 1024 * 1024  # also the upload limit in .chainlit/config.toml
HISTORY_EXCHANGES = 1  # earlier (question, answer) pairs carried into the next prompt
BATCH = 32  # rows per classify() call for files

# Sampling defaults and slider ranges of the Assistant's settings panel.
DEFAULT_SETTINGS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 256}


class InputError(ValueError):
    """Input the app refuses, with a message for the user."""


def mode_for(profile: str | None) -> str:
    """The mode a chat profile selects (the first profile, Spam check, is the default)."""
    return profile if profile in MODES else SPAM_MODE


# --------------------------------------------------------------------------- models, loaded once
class ModelUnavailable(RuntimeError):
    """A checkpoint could not be loaded; the message says which command creates it."""


class ModelCache:
    """Loads each model once per process, on first use, thread-safely; failures are not cached,
    so a checkpoint trained while the app runs is picked up by the next message."""

    def __init__(self, spam_loader: Callable[[], Any] | None = None, instruct_loader: Callable[[], Any] | None = None):
        self._loaders = {SPAM_MODE: spam_loader or _load_spam, ASSISTANT_MODE: instruct_loader or _load_instruct}
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, mode: str):
        with self._lock:
            if mode not in self._models:
                try:
                    self._models[mode] = self._loaders[mode]()
                except Exception as e:  # CheckpointError, TokenizerError, OSError...: tell the user, keep running
                    raise ModelUnavailable(str(e)) from e
            return self._models[mode]


def _load_spam():
    from llm.spam import SpamClassifier  # reads $LLM_SPAM_CHECKPOINT, $LLM_DEVICE, $LLM_PRECISION
    return SpamClassifier.load()


def _load_instruct():
    from llm.instruct import InstructionModel  # reads $LLM_INSTRUCT_CHECKPOINT, $LLM_DEVICE, $LLM_PRECISION
    return InstructionModel.load()


def unavailable_reply(mode: str, error: Exception) -> str:
    return f"⚠️ **The {mode} model is not available.**\n\n{error}\n\nThe app keeps running; try again once it exists."


# --------------------------------------------------------------------------- spam check
def format_verdict(label: str, p_spam: float) -> str:
    """E.g. "🔴 **Spam — 97.3%** spam probability"; the colour is the visual cue."""
    icon, name = ("🔴", "Spam") if label == "spam" else ("🟢", "Ham")
    return f"{icon} **{name} — {p_spam:.1%}** spam probability"


def split_messages(text: str) -> list[str]:
    """One message per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_spam_text(text: str) -> list[str]:
    """The messages of one paste, or InputError saying what is wrong."""
    if not text or not text.strip():
        raise InputError("Paste an SMS message to check (one message per line for several), or attach a CSV/TXT file.")
    if len(text) > SPAM_MAX_CHARS:
        raise InputError(f"That paste has {len(text):,} characters; one paste may have at most {SPAM_MAX_CHARS:,}. "
                         "Upload a CSV or TXT file instead (one message per line).")
    messages = split_messages(text)
    if len(messages) > SPAM_MAX_LINES:
        raise InputError(f"That paste has {len(messages):,} lines; at most {SPAM_MAX_LINES:,} are classified at once. "
                         "Upload a CSV or TXT file for more.")
    return messages


def _short(text: str, n: int = 60) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def spam_reply(classifier, text: str) -> str:
    """The reply to a paste: one verdict, or a table when several lines are classified together."""
    messages = check_spam_text(text)
    results = classifier.classify(messages)
    if len(messages) == 1:
        return format_verdict(*results[0])
    n_spam = sum(label == "spam" for label, _ in results)
    rows = [f"| {i} | {format_verdict(label, p)} | {_short(m)} |"
            for i, (m, (label, p)) in enumerate(zip(messages, results), start=1)]
    return "\n".join([f"**{len(messages)} messages: {n_spam} spam, {len(messages) - n_spam} ham**", "",
                      "| # | verdict | message |", "|---|---|---|", *rows])


# --------------------------------------------------------------------------- spam check: files
@dataclass
class FileResult:
    csv_bytes: bytes
    filename: str
    n_rows: int
    n_spam: int
    summary: str = ""


def _decode_text_file(name: str, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise InputError(f"{name} looks like a binary file. Upload a CSV (with a `text` column) or a TXT file "
                         "(one message per line).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252")  # SMS exports from spreadsheets
        except UnicodeDecodeError:
            raise InputError(f"{name} is not UTF-8 text. Save it as UTF-8 CSV or TXT and upload it again.") from None


def read_upload(name: str, data: bytes) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """(messages, original rows, original columns) of an uploaded CSV or TXT, or InputError."""
    suffix = Path(name).suffix.lower()
    if suffix not in (".csv", ".txt"):
        raise InputError(f"{name}: only .csv and .txt files can be classified.")
    if len(data) > FILE_MAX_BYTES:
        raise InputError(f"{name} is {len(data) / 1e6:.1f} MB; the limit is {FILE_MAX_BYTES / 1e6:.0f} MB.")
    text = _decode_text_file(name, data)
    if suffix == ".txt":
        messages = split_messages(text)
        rows, columns = [{} for _ in messages], []
    else:
        try:
            messages, rows, columns = read_csv_messages(text, name)
        except SpamDataError as e:
            raise InputError(str(e)) from None
    if not any(messages):
        raise InputError(f"{name} has no messages to classify.")
    if len(messages) > FILE_MAX_ROWS:
        raise InputError(f"{name} has {len(messages):,} rows; at most {FILE_MAX_ROWS:,} are classified per file.")
    return messages, rows, columns


def classify_upload(classifier, name: str, data: bytes, progress: Callable[[int, int], None] | None = None) -> FileResult:
    """Classify every row of a CSV/TXT upload; returns a CSV with `label` and `spam_probability` added."""
    messages, rows, columns = read_upload(name, data)
    todo = [i for i, m in enumerate(messages) if m]
    verdicts: dict[int, tuple[str, float]] = {}
    for start in range(0, len(todo), BATCH):
        chunk = todo[start:start + BATCH]
        verdicts.update(zip(chunk, classifier.classify([messages[i] for i in chunk])))
        if progress:
            progress(min(start + BATCH, len(todo)), len(todo))
    out = io.StringIO()
    fieldnames = (columns or ["text"]) + ["label", "spam_probability"]
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for i, (message, row) in enumerate(zip(messages, rows)):
        label, p = verdicts.get(i, ("", None))
        writer.writerow({**(row if columns else {"text": message}), "label": label,
                         "spam_probability": "" if p is None else f"{p:.4f}"})
    n_spam = sum(label == "spam" for label, _ in verdicts.values())
    stem = Path(name).stem
    summary = (f"**{stem}**: {len(verdicts):,} messages classified — {n_spam:,} spam, {len(verdicts) - n_spam:,} ham"
               + (f" ({len(messages) - len(verdicts):,} empty rows skipped)" if len(verdicts) < len(messages) else "")
               + ". Download the labelled CSV below.")
    return FileResult(out.getvalue().encode("utf-8"), f"{stem}-labelled.csv", len(verdicts), n_spam, summary)


# --------------------------------------------------------------------------- assistant
def check_instruction(text: str) -> str:
    if not text or not text.strip():
        raise InputError("Type an instruction or a question, e.g. “Rewrite this sentence in passive voice: …”.")
    if len(text) > ASSISTANT_MAX_CHARS:
        raise InputError(f"That message has {len(text):,} characters; the assistant reads at most "
                         f"{ASSISTANT_MAX_CHARS:,} (its context window is 1,024 tokens). Shorten it and send it again.")
    return text.strip()


def generation_settings(chat_settings: dict | None) -> GenerationSettings:
    """GenerationSettings from the Assistant's settings panel; 0 top-k and 1.0 top-p mean "off"."""
    s = {**DEFAULT_SETTINGS, **{k: v for k, v in (chat_settings or {}).items() if v is not None}}
    top_k = int(s["top_k"])
    top_p = float(s["top_p"])
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


async def iterate_in_thread(make_iterator: Callable[[], Iterator[str]], stop: threading.Event) -> AsyncIterator[str]:
    """Run a blocking iterator (token generation) in a worker thread, yielding its items on the event loop.

    The loop never blocks: pieces travel through an asyncio.Queue. Setting `stop` (the Stop button),
    or cancelling/closing this generator, ends the worker at the next token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def put(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work():
        try:
            for piece in make_iterator():
                put(piece)
                if stop.is_set():
                    break
        except BaseException as e:  # delivered to the awaiting side
            put(e)
        finally:
            put(done)

    thread = threading.Thread(target=work, name="llm-generate", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # cancelled or closed early: let the worker finish now


async def stream_answer(model, instruction: str, settings: GenerationSettings, conversation: Conversation,
                        stop: threading.Event) -> AsyncIterator[str]:
    """The assistant's answer as text pieces, generated off the event loop; records the exchange."""
    text = check_instruction(instruction)
    pieces: list[str] = []

    def make():
        return model.stream(text, settings=settings, history=conversation.history(), should_stop=stop.is_set)

    async for piece in iterate_in_thread(make, stop):
        pieces.append(piece)
        yield piece
    conversation.add(text, "".join(pieces))


# --------------------------------------------------------------------------- optional login
LOGIN_USER_ENV, LOGIN_PASSWORD_ENV = "LLM_APP_USER", "LLM_APP_PASSWORD"


def login_enabled() -> bool:
    """Password login is on when $LLM_APP_PASSWORD is set (Chainlit then also needs CHAINLIT_AUTH_SECRET)."""
    return bool(os.environ.get(LOGIN_PASSWORD_ENV))


def check_login(username: str, password: str) -> bool:
    expected_user = os.environ.get(LOGIN_USER_ENV, "admin")
    expected_password = os.environ.get(LOGIN_PASSWORD_ENV, "")
    return bool(expected_password) and hmac.compare_digest(username.encode(), expected_user.encode()) \
        and hmac.compare_digest(password.encode(), expected_password.encode())
