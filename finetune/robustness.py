"""Label-preserving rewrites of SMS messages, to measure how far the spam classifier's accuracy moves when
the same message is typed differently (`python -m finetune.spam eval --robustness`).

Every transform is a pure, deterministic function str -> str (no randomness: a variant of a message is the
same on every run). The rules:

- upper: `text.upper()`.
- lower: `text.lower()`.
- whitespace: each run of spaces after a sentence end (. ! ?) becomes a newline, every remaining space is
  doubled, and the message gets two leading spaces and a trailing " \\n". `" ".join(t.split())` gives the
  original back for any message whose whitespace was single spaces.
- leetspeak: a->4, e->3, i->1, o->0, s->5 (either case) in words only: URL-ish tokens (see below) and
  e-mail addresses are left alone, and digits are never touched (they are not letters).
- modern: the forms of 2020s spam. (1) A UK phone number written as 10-11 digits starting with 0
  (09061701461, 08000930705) becomes "+44 7700 900 " + its last three digits (+44 7700 900 461): Ofcom's
  drama range, in today's spacing. Spaced numbers (0330 912 4455) and short codes (87066) are left alone.
  (2) A URL-ish token (http(s)://..., www...., or name.tld[/path] with a common TLD) becomes an https://
  short link, "https://bit.ly/" + the first 7 hex digits of the token's sha1 (so it is the same link on
  every run); trailing punctuation stays where it was; e-mail addresses are left alone.
- emoji: one emoji prepended and one appended, picked from fixed lists by the crc32 of the message.

Apply to labelled messages with `variants(rows)`; `TRANSFORMS` is the registry, in report order.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from typing import Callable, Sequence

# A URL-ish token: a scheme, www., or host.tld with a common TLD (optionally followed by a path).
_TLDS = ("com|co\\.uk|uk|org|net|info|io|co|biz|us|me|ly|app|vip|top|xyz|shop|click|live|support|online|site|gov")
URL_RE = re.compile(r"(?:https?://\S+|www\.\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:" + _TLDS + r")(?:/\S*)?(?!\w))", re.I)
EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_EMAIL_OR_URL = re.compile(f"(?P<email>{EMAIL_RE.pattern})|{URL_RE.pattern}", re.I)
UK_NUMBER_RE = re.compile(r"(?<![\d+])0\d{9,10}(?!\d)")
_TRAILING = ".,;:!?)]'\""
LEET = str.maketrans({"a": "4", "A": "4", "e": "3", "E": "3", "i": "1", "I": "1", "o": "0", "O": "0", "s": "5", "S": "5"})
EMOJI_BEFORE = ("👋", "😊", "🔥", "📦", "🎉", "👉")
EMOJI_AFTER = ("🙂", "👍", "✨", "😂", "💯", "❤️")


def upper(text: str) -> str:
    return text.upper()


def lower(text: str) -> str:
    return text.lower()


def whitespace(text: str) -> str:
    t = re.sub(r"(?<=[.!?]) +", "\n", text)
    return "  " + t.replace(" ", "  ") + " \n"


def _protected_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for r in (URL_RE, EMAIL_RE) for m in r.finditer(text)]


def leetspeak(text: str) -> str:
    spans = sorted(_protected_spans(text))
    out, pos = [], 0
    for a, b in spans:
        if a < pos:  # overlapping match (an e-mail's domain found as a URL too)
            a = pos
        out.append(text[pos:a].translate(LEET))
        out.append(text[a:b])
        pos = max(pos, b)
    out.append(text[pos:].translate(LEET))
    return "".join(out)


def short_link(token: str) -> str:
    return "https://bit.ly/" + hashlib.sha1(token.encode("utf-8")).hexdigest()[:7]


def _modern_url(m: re.Match) -> str:
    token = m.group(0)
    if m.group("email"):  # an e-mail address is not a link
        return token
    core = token.rstrip(_TRAILING)
    return short_link(core) + token[len(core):]


def modern(text: str) -> str:
    text = UK_NUMBER_RE.sub(lambda m: "+44 7700 900 " + m.group(0)[-3:], text)
    return _EMAIL_OR_URL.sub(_modern_url, text)


def emoji(text: str) -> str:
    h = zlib.crc32(text.encode("utf-8"))
    return f"{EMOJI_BEFORE[h % len(EMOJI_BEFORE)]} {text} {EMOJI_AFTER[(h >> 8) % len(EMOJI_AFTER)]}"


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "upper": upper, "lower": lower, "whitespace": whitespace, "leetspeak": leetspeak, "modern": modern, "emoji": emoji,
}


def variants(rows: Sequence[tuple], name: str) -> list[tuple]:
    """`rows` (label, text, ...) with the text rewritten by TRANSFORMS[name]; labels and other columns kept."""
    fn = TRANSFORMS[name]
    return [(r[0], fn(r[1]), *r[2:]) for r in rows]
