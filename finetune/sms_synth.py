"""Synthetic SMS of the 2020s by documented rules, and the random restyling that training applies.

The UCI collection is 2010-era UK SMS: it has no parcel-fee smishing, no "Hi mum, new number", no task scams,
and almost none of the automated texts people get today (one-time codes, delivery slots, bank notices). A
model trained on it alone flags an ordinary one-time code as spam and misses a "Hi mum" scam with 99%
confidence. `generate` writes such messages from the templates in `finetune/sms_templates.py` (their
categories, sources and rules are documented there); `finetune.spam train` adds them to its training set
(`--synthetic`, per category per label) and to the validation set the temperature is fitted on.

Rules, in order:
1. Pick a category (round-robin over the label's categories, so each gets the same count), then a template.
2. Expand it: `[a|b]` picks one alternative, `{slot}` a value from `SLOTS` or a generator below (amounts,
   codes, times, links, phone numbers). Links: a scam link is a look-alike or throwaway domain, a short
   link or a chat link; a genuine link is a brand's own domain. Phone numbers are drawn from the ranges
   reserved for fiction (+44 7700 900xxx, 0330/0800/0161 numbers, (555) 01xx) for both labels alike.
3. Restyle it with `restyle` (label-blind, so no style is a cue for a label): lowercase, no final full stop,
   an emoji, and, with `NOISE_PROBABILITY`, one of `NOISES` (upper case, leetspeak on part of the letters,
   ragged whitespace, modern links and numbers, emoji). Training applies `restyle`'s noise to the UCI messages too,
   afresh each epoch.
4. Drop duplicates; every message is a function of (seed, count): the same arguments give the same file.

    python -m finetune.sms_synth --per-category 40 --out synthetic.csv   # look at what training adds
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import string
import sys
from pathlib import Path
from typing import Callable, Sequence

from finetune.robustness import EMOJI_AFTER, EMOJI_BEFORE, LEET, UK_NUMBER_RE, URL_RE, _protected_spans
from finetune.sms_templates import HAM_TEMPLATES, SLOTS, SPAM_TEMPLATES

TEMPLATES = {"spam": SPAM_TEMPLATES, "ham": HAM_TEMPLATES}
NOISE_PROBABILITY = 0.2  # a synthetic message gets one random noise from NOISES with this probability
TRAIN_NOISE_PROBABILITY = 0.3  # `finetune.spam train --noise`: each training message, each epoch
_SLOT = re.compile(r"\{(\w+)\}")
_CHOICE = re.compile(r"\[([^\[\]]*)\]")

# ---------------------------------------------------------------------------------------------
# slot generators (the values that are not a fixed list)
# ---------------------------------------------------------------------------------------------

_CURRENCIES = ("£", "$", "€")
_SCAM_WORDS = ("secure", "verify", "help", "pay", "track", "update", "support", "portal", "redelivery", "claim",
               "refund", "account", "login", "service", "online", "billing")
_SCAM_TLDS = (".info", ".co", ".top", ".xyz", ".online", ".live", ".support", ".app", ".site", ".click", ".vip",
              ".com", ".net", ".uk.com", ".shop")
_BRAND_WORDS = ("royalmail", "evri", "dpd", "dhl", "ups", "usps", "hmrc", "gov", "nhs", "paypal", "apple", "netflix",
                "amazon", "barclays", "hsbc", "lloyds", "natwest", "santander", "ee", "o2", "dvla", "toll", "parking",
                "tesco", "coinbase", "binance", "wallet", "rewards", "bonus", "jobs")
_SHORTENERS = ("bit.ly/", "tinyurl.com/", "t.ly/", "cutt.ly/", "is.gd/", "rb.gy/", "t.me/", "wa.me/44")
_REAL_LINKS = ("royalmail.com/track", "dpd.co.uk/p/", "evri.com/track/", "ups.com/track", "amazon.co.uk/orders",
               "nhs.uk/book", "boots.com/rx/", "bristol.gov.uk/bins", "octopus.energy/acct/", "tesco.com/orders/",
               "uber.com/trip/", "thetrainline.com/t/", "dentally.co/b/", "school.app/pay/", "gp.surgery/app/")


def _amount(rng: random.Random, lo: float, hi: float, cents: bool = True) -> str:
    value = rng.uniform(lo, hi)
    text = f"{value:,.2f}" if cents and rng.random() < 0.5 else f"{round(value):,}"
    return rng.choice(_CURRENCIES) + text


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _time(rng: random.Random) -> str:
    h, m = rng.randint(7, 21), rng.choice((0, 15, 30, 45, 10, 50))
    return f"{h}:{m:02d}" if rng.random() < 0.6 else f"{(h - 1) % 12 + 1}:{m:02d}{'am' if h < 12 else 'pm'}"


def _path(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(4, 8)))


def _scam_link(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        link = rng.choice(_SHORTENERS) + _path(rng)
    else:
        words = [rng.choice(_BRAND_WORDS), rng.choice(_SCAM_WORDS)]
        rng.shuffle(words)
        link = rng.choice(("-", "", ".")).join(words) + rng.choice(_SCAM_TLDS)
        if rng.random() < 0.6:
            link += "/" + rng.choice(("pay", "verify", "id", "uk", "login", "claim", _path(rng)))
    return rng.choice(("https://", "http://", "", "")) + link


def _real_link(rng: random.Random) -> str:
    return rng.choice(("https://", "", "www.")) + rng.choice(_REAL_LINKS) + (_path(rng) if rng.random() < 0.5 else "")


def _phone(rng: random.Random) -> str:
    return rng.choice((f"+44 7700 900{_digits(rng, 3)}", f"07700 900{_digits(rng, 3)}", f"0330 {_digits(rng, 3)} {_digits(rng, 4)}",
                       f"0800 {_digits(rng, 3)} {_digits(rng, 4)}", f"(555) 01{_digits(rng, 1)}-{_digits(rng, 4)}",
                       f"0161 {_digits(rng, 3)} {_digits(rng, 4)}", f"+1 555-01{_digits(rng, 2)}"))


GENERATED: dict[str, Callable[[random.Random], str]] = {
    "fee": lambda r: _amount(r, 0.5, 4.99),
    "amount": lambda r: _amount(r, 20, 2500),
    "amount2": lambda r: _amount(r, 20, 2500),
    "amount_small": lambda r: _amount(r, 1, 50),
    "pay": lambda r: _amount(r, 80, 400, cents=False),
    "pay2": lambda r: _amount(r, 400, 900, cents=False),
    "points": lambda r: f"{r.randint(2, 90) * 100:,}",
    "crypto_amount": lambda r: r.choice(("0.1 BTC", "0.5 ETH", "500 USDT", "0.05 BTC", "1 ETH")),
    "code": lambda r: _digits(r, r.choice((4, 6, 6, 6, 8))),
    "ref": lambda r: r.choice(("", "#", "RM", "TX")) + _digits(r, r.randint(5, 10)),
    "last4": lambda r: _digits(r, 4),
    "sort_code": lambda r: f"{_digits(r, 2)}-{_digits(r, 2)}-{_digits(r, 2)} {_digits(r, 8)}",
    "plate": lambda r: r.choice(("AB12 CDE", "KX70 LMN", "7ABC123", "YD19 RTP", "LR68 WZX")),
    "time": _time,
    "time2": _time,
    "n": lambda r: str(r.randint(2, 12)),
    "scam_link": _scam_link,
    "real_link": _real_link,
    "scam_phone": _phone,
    "real_phone": _phone,
    "premium_phone": lambda r: f"09{_digits(r, 2)} {_digits(r, 3)} {_digits(r, 4)}",
}


def expand(template: str, rng: random.Random) -> str:
    """One message from a template: alternatives first (innermost), then slots (slot values may hold slots)."""
    while (m := _CHOICE.search(template)):
        template = template[:m.start()] + rng.choice(m.group(1).split("|")) + template[m.end():]
    values: dict[str, str] = {}  # a slot named twice in one message has one value (the same courier, the same kid)

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            values[name] = GENERATED[name](rng) if name in GENERATED else rng.choice(SLOTS[name])
        return values[name]

    for _ in range(3):  # a slot value may itself hold a slot
        template = _SLOT.sub(fill, template)
    return re.sub(r" {2,}", " ", template).strip()


# ---------------------------------------------------------------------------------------------
# restyling: what real people and senders do to the same words (label-blind)
# ---------------------------------------------------------------------------------------------

def _leet_some(text: str, rng: random.Random) -> str:
    """Leetspeak on a random share (30-100%) of the letters LEET maps, never inside links or e-mail addresses."""
    share, spans, out = rng.uniform(0.3, 1.0), _protected_spans(text), []
    for i, ch in enumerate(text):
        protected = any(a <= i < b for a, b in spans)
        out.append(ch.translate(LEET) if not protected and rng.random() < share else ch)
    return "".join(out)


def _ragged_whitespace(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    return (" " * rng.randint(0, 2)) + "".join(w + rng.choice((" ", " ", "  ", "\n", "   ")) for w in words).rstrip() \
        + rng.choice(("", " ", "\n", " \n"))


def _modern_links_and_numbers(text: str, rng: random.Random) -> str:
    text = UK_NUMBER_RE.sub(lambda m: rng.choice(("+44 7700 900", "07700 900", "+447700900")) + _digits(rng, 3), text)
    return URL_RE.sub(lambda m: rng.choice(("https://", "")) + rng.choice(_SHORTENERS) + _path(rng), text)


NOISES: dict[str, Callable[[str, random.Random], str]] = {
    "upper": lambda t, r: t.upper(),
    "lower": lambda t, r: t.lower(),
    "leetspeak": _leet_some,
    "whitespace": _ragged_whitespace,
    "modern": _modern_links_and_numbers,
    "emoji": lambda t, r: f"{r.choice(EMOJI_BEFORE)} {t} {r.choice(EMOJI_AFTER)}",
}


def noisy(text: str, rng: random.Random, probability: float = NOISE_PROBABILITY) -> str:
    """With `probability`, one noise from NOISES picked at random; else the text unchanged."""
    if rng.random() >= probability:
        return text
    return NOISES[rng.choice(sorted(NOISES))](text, rng)


def restyle(text: str, rng: random.Random, noise: float = NOISE_PROBABILITY) -> str:
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.25:
        text = text.rstrip(".")
    if rng.random() < 0.12:
        text = f"{rng.choice(EMOJI_BEFORE)} {text}" if rng.random() < 0.5 else f"{text} {rng.choice(EMOJI_AFTER)}"
    return noisy(text, rng, noise)


# ---------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------

def generate(per_category: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(label, text, category) rows: `per_category` distinct messages for every category of both labels."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for label, by_category in TEMPLATES.items():
        for category, templates in by_category.items():
            made, tries = 0, 0
            while made < per_category and tries < per_category * 50:
                tries += 1
                text = restyle(expand(rng.choice(templates), rng), rng)
                if text.lower() not in seen:
                    seen.add(text.lower())
                    rows.append((label, text, category))
                    made += 1
    rng.shuffle(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.sms_synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-category", type=int, default=40, help="messages per category (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same messages (default: %(default)s)")
    p.add_argument("--out", default="-", help="CSV to write (label,text,category); - for standard output (default)")
    args = p.parse_args(argv)
    if args.per_category < 1:
        p.error("--per-category must be at least 1")
    rows = generate(args.per_category, args.seed)
    f = sys.stdout if args.out == "-" else open(Path(args.out), "w", newline="", encoding="utf-8")
    try:
        w = csv.writer(f)
        w.writerow(["label", "text", "category"])
        w.writerows(rows)
    finally:
        if f is not sys.stdout:
            f.close()
    if args.out != "-":
        print(f"{len(rows)} messages -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
