"""`python -m finetune.spam predict`: label, band and calibrated spam probability per message, from arguments or a
file read by the app's rules (llm/messages_file.py), optionally with the words behind each verdict."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llm.messages_file import MessagesFileError, load_messages
from llm.spam import SpamClassifier, SpamDataError, format_probability


def read_messages_file(path: str) -> list[str]:
    """The messages of a .csv, .tsv or .txt file, read by the app's rules (llm.messages_file); empty rows skipped.

    Notes on stderr say what a reader of the output would otherwise not know: a Windows-1252 guess, skipped rows."""
    p = Path(path)
    if not p.is_file():
        raise MessagesFileError(f"{p} does not exist or is not a file. Pass --file messages.csv|tsv|txt.")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MessagesFileError(f"cannot read {p}: {e.strerror or e}.") from None
    f = load_messages(str(p), data)
    if f.encoding == "cp1252":
        print(f"note: {p} is not UTF-8; it was read as Windows-1252. If accented letters look wrong, save the file "
              "as UTF-8.", file=sys.stderr)
    messages = [m for m in f.messages if m]
    skipped = len(f.messages) - len(messages)
    if skipped:
        print(f"note: {skipped} empty row{'s' if skipped > 1 else ''} of {p} skipped", file=sys.stderr)
    return messages


def predict(args) -> int:
    texts = list(args.texts)
    if args.file:
        texts += read_messages_file(args.file)
    if not texts:
        raise SpamDataError("nothing to classify: pass messages as arguments or --file messages.csv|tsv|txt")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise SpamDataError(f"message {', '.join(map(str, empty[:10]))} is empty; there is nothing to classify")
    clf = SpamClassifier.load(args.checkpoint, args.device, args.precision, args.bpe_dir)
    clf.batch_size = args.batch_size
    long = [i + 1 for i, t in enumerate(texts) if len(clf.tokenizer.encode(t)) > clf.max_length]
    if long:
        print(f"note: message {', '.join(map(str, long[:10]))} exceed{'s' if len(long) == 1 else ''} {clf.max_length} tokens; "
              "only the start is classified", file=sys.stderr)
    results = clf.verdicts(texts, args.threshold)
    explained = [clf.explain(t) for t in texts] if args.explain else [None] * len(texts)
    if args.json:
        out = []
        for t, v, e in zip(texts, results, explained):
            out.append({"text": t, "label": v.label, "p_spam": round(v.p_spam, 6), "band": v.band})
            if e is not None:
                out[-1]["explanation"] = {"towards_spam": [[w, round(x, 6)] for w, x in e.towards_spam()],
                                          "towards_ham": [[w, round(x, 6)] for w, x in e.towards_ham()]}
        print(json.dumps(out, ensure_ascii=False))
    else:
        for t, v, e in zip(texts, results, explained):
            short = t if len(t) <= 70 else t[:67] + "..."
            print(f"{v.label:4s}  {v.band:11s}  p_spam {format_probability(v.p_spam, v.threshold):>7s}  {short!r}")
            if e is not None:
                for side, words in (("towards spam", e.towards_spam()), ("towards ham", e.towards_ham())):
                    print(f"      {side}: " + (", ".join(f"{w!r} {x:+.3f}" for w, x in words) or "-"))
    return 0
