"""SMS spam: the data (UCI SMS Spam Collection), its splits, and the classifier the app calls.

    from llm.spam import SpamClassifier, SPAM_THRESHOLD
    clf = SpamClassifier.load()                 # $LLM_SPAM_CHECKPOINT or checkpoints/spam
    clf.classify(["WINNER!! Claim your prize"]) # -> [("spam", 0.99)]

    clf.verdicts(["WINNER!! Claim your prize"]) # -> [Verdict(label="spam", p_spam=0.99, band="spam", threshold=0.5)]

Operating point. A message is spam when p_spam >= the checkpoint's threshold: `metadata.threshold` in its
config.json (written by `finetune.spam train`: SPAM_THRESHOLD, `--threshold T`, or the lowest threshold that
reaches `--target-precision P` on the validation set), SPAM_THRESHOLD when absent. A caller may pass its own.

Calibration. `metadata.temperature` (T, fitted on the validation set after training, or later by
`python -m finetune.spam calibrate`) divides the logits before the softmax, so every p_spam reported here is
calibrated: softmax(logits / T). T = 1 when absent. A 2-class temperature never moves the 0.5 point.

Bands (on the calibrated p_spam, t = the threshold in use):
    "spam"         p >= max(SPAM_BAND, t)             (SPAM_BAND = 0.9)
    "likely spam"  t <= p < max(SPAM_BAND, t)          (still labelled spam)
    "unsure"       min(UNSURE_BAND, t) <= p < t        (labelled ham; UNSURE_BAND = 0.2)
    "ham"          p < min(UNSURE_BAND, t)
so "spam"/"likely spam" always mean the label spam and "unsure"/"ham" the label ham, whatever t is.

Explanations (`explain`): occlusion. For one message, every word (a run of non-space characters) is removed
in turn, with the space after it, and p_spam is computed for the message and every variant in ONE batched
forward pass; a word's effect is p_spam(message) - p_spam(message without it): positive pushes towards spam.
Only words inside the classified start count (at most EXPLAIN_MAX_WORDS of them); removing a message's only
word leaves just <|endoftext|>.

Inputs are right-padded with <|endoftext|> and truncated to the checkpoint's max length keeping the START of
the message (as the book does: spam announces itself early). Training and evaluation live in `finetune/spam.py`.
"""
from __future__ import annotations

import csv
import os
import random
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from llm.checkpoint import finite_number

SPAM_THRESHOLD = 0.5  # default operating point: p_spam at or above this -> "spam" (a checkpoint may store its own)
SPAM_BAND = 0.9  # calibrated p_spam at or above max(this, threshold) -> band "spam"; threshold..this -> "likely spam"
UNSURE_BAND = 0.2  # min(this, threshold) <= p_spam < threshold -> band "unsure"; below -> "ham"
BANDS = ("spam", "likely spam", "unsure", "ham")
EXPLAIN_MAX_WORDS = 128  # words occluded per explained message (the variants share one forward pass)
EXPLAIN_TOP = 5  # words listed towards spam and towards ham
LABELS = ("ham", "spam")  # class index -> name; stored in the checkpoint's metadata
CHECKPOINT_ENV = "LLM_SPAM_CHECKPOINT"
DEFAULT_CHECKPOINT = "checkpoints/spam"
DATA_ENV = "LLM_SPAM_DATA"
UCI_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
DATA_FILE = "SMSSpamCollection"
DATA_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"  # of SMSSpamCollection
SEED = 123
SPLIT_NAMES = ("train", "validation", "test")
FRACTIONS = (0.7, 0.1, 0.2)
CREATE_HINT = "Create it with: python -m finetune.spam prepare && python -m finetune.spam train --out checkpoints/spam"


class SpamDataError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def fetch_data(path: str | os.PathLike | None = None, data_dir: str | os.PathLike = "data/sms_spam") -> Path:
    """The SMSSpamCollection file: `path` (file or the UCI zip), else $LLM_SPAM_DATA, else download the zip."""
    from llm.download import download, sha256_of

    chosen = path or os.environ.get(DATA_ENV)
    data_dir = Path(data_dir)
    if chosen:
        src = Path(chosen).expanduser()
        if not src.is_file():
            raise SpamDataError(f"SMS data file {src} does not exist (from --sms-data or ${DATA_ENV}).")
        user_supplied = True
    else:
        src = download(UCI_URL, data_dir / "sms+spam+collection.zip",
                       offline_hint=f"pass it (the zip or the extracted {DATA_FILE}) with --sms-data PATH or ${DATA_ENV}=PATH.")
        user_supplied = False
    if zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as z:
            if DATA_FILE not in z.namelist():
                raise SpamDataError(f"{src} has no {DATA_FILE} inside (it has {', '.join(z.namelist())}).")
            out = data_dir / DATA_FILE
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(DATA_FILE))
        src = out
    digest = sha256_of(src)
    if digest != DATA_SHA256:
        msg = f"{src} has sha256 {digest}, not the published UCI file's {DATA_SHA256}"
        if not user_supplied:
            raise SpamDataError(msg + "; the download is corrupt. Delete it and run again.")
        print(f"warning: {msg}; using it anyway.", file=sys.stderr)
    return src


def read_collection(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(label, text) pairs from `label<TAB>text` lines. Split on the first tab only: texts hold
    quotes and the odd tab, so a CSV reader would mangle them."""
    rows = []
    raw = Path(path).read_bytes().decode("utf-8", errors="replace")
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or label not in LABELS:
            raise SpamDataError(f"{path}:{n}: expected 'ham' or 'spam', a tab, then the message; got {line[:60]!r}")
        rows.append((label, text))
    return rows


def deduplicate(rows: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Drop exact duplicate messages (first occurrence kept); returns the rows and how many were dropped."""
    seen, out = set(), []
    for label, text in rows:
        if text not in seen:
            seen.add(text)
            out.append((label, text))
    return out, len(rows) - len(out)


def _cut(items: list, fractions=FRACTIONS) -> list[list]:
    n_train, n_val = round(len(items) * fractions[0]), round(len(items) * fractions[1])
    return [items[:n_train], items[n_train:n_train + n_val], items[n_train + n_val:]]


def make_splits(rows: Sequence[tuple[str, str]], seed: int = SEED) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Two split sets over deduplicated rows, each train/validation/test (70/10/20):

    natural:  stratified by label, the real ham:spam ratio (what users meet).
    balanced: the book's set, ham undersampled to the spam count. It is cut from the natural
              split's parts (all spam of a part + as many random ham of the same part), so a
              model trained on natural/train has never seen a balanced/test message.
    """
    rng = random.Random(seed)
    by_label = {lab: [r for r in rows if r[0] == lab] for lab in LABELS}
    parts = {lab: _cut(rng.sample(items, len(items))) for lab, items in by_label.items()}
    natural, balanced = {}, {}
    for i, name in enumerate(SPLIT_NAMES):
        nat = parts["ham"][i] + parts["spam"][i]
        natural[name] = rng.sample(nat, len(nat))
        bal = parts["ham"][i][:len(parts["spam"][i])] + parts["spam"][i]  # ham parts are already shuffled
        balanced[name] = rng.sample(bal, len(bal))
    return {"natural": natural, "balanced": balanced}


def write_split(rows: Sequence[tuple[str, str]], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows(rows)
    return path


def read_split(path: str | os.PathLike) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise SpamDataError(f"{path} does not exist. Create the splits with: python -m finetune.spam prepare")
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["label"], r["text"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# Operating point, bands, display
# ---------------------------------------------------------------------------------------------

class Verdict(NamedTuple):
    label: str  # "spam" | "ham"
    p_spam: float  # calibrated
    band: str  # one of BANDS
    threshold: float  # the operating point the label was decided at

    @classmethod
    def of(cls, p_spam: float, threshold: float) -> "Verdict":
        """The label and band of a calibrated p_spam at `threshold`: the one place they are derived."""
        return cls(label_of(p_spam, threshold), p_spam, band_of(p_spam, threshold), threshold)


class Explanation(NamedTuple):
    p_spam: float  # calibrated, of the whole message
    words: list[tuple[str, float]]  # (word, p_spam - p_spam without it), in message order

    def towards_spam(self, k: int = EXPLAIN_TOP) -> list[tuple[str, float]]:
        """The k words whose removal lowers p_spam most (effect > 0), strongest first."""
        return sorted((w for w in self.words if w[1] > 0), key=lambda w: -w[1])[:k]

    def towards_ham(self, k: int = EXPLAIN_TOP) -> list[tuple[str, float]]:
        """The k words whose removal raises p_spam most (effect < 0), strongest first."""
        return sorted((w for w in self.words if w[1] < 0), key=lambda w: w[1])[:k]


_WORD = re.compile(r"\S+")


def occlusions(text: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(word, text without the word and the space after it, or before it for the last word) per word."""
    out = []
    for m in list(_WORD.finditer(text))[:limit]:
        start, end = m.span()
        after = len(text) - len(text[end:].lstrip())
        if after < len(text):  # another word follows: drop the word and the spaces after it
            variant = text[:start] + text[after:]
        else:  # the last word: drop the spaces before it
            variant = text[:start].rstrip()
        out.append((m.group(), variant))
    return out


def explanation(words: Sequence[str], p: Sequence[float]) -> Explanation:
    """The Explanation from the calibrated p_spam of `explain_rows`' rows (the message first)."""
    return Explanation(p[0], [(w, p[0] - q) for w, q in zip(words, p[1:])])


def valid_temperature(value) -> bool:
    return finite_number(value) and value > 0


def valid_threshold(value) -> bool:
    """A threshold is a real number strictly between 0 and 1 (not a bool, not NaN)."""
    return finite_number(value) and 0 < value < 1


def label_of(p_spam: float, threshold: float = SPAM_THRESHOLD) -> str:
    return "spam" if p_spam >= threshold else "ham"


def band_of(p_spam: float, threshold: float = SPAM_THRESHOLD) -> str:
    """The band of a calibrated p_spam (see the module docstring); consistent with label_of at `threshold`."""
    if p_spam >= max(SPAM_BAND, threshold):
        return "spam"
    if p_spam >= threshold:
        return "likely spam"
    if p_spam >= min(UNSURE_BAND, threshold):
        return "unsure"
    return "ham"


def format_probability(p: float, threshold: float | None = None) -> str:
    """A probability for people: one decimal, never "100.0%" or "0.0%" ("> 99.9%", "< 0.1%"). With the threshold
    the verdict was decided at, never rounded onto or across it: 0.49982 at 0.5 reads "49.98%", not "50.0%"."""
    if p >= 0.9995:
        return "> 99.9%"
    if p < 0.0005:
        return "< 0.1%"
    if threshold is None:
        return f"{p:.1%}"
    for digits in (1, 2, 3):
        if (round(p * 100, digits) >= threshold * 100) == (p >= threshold):
            return f"{p:.{digits}%}"
    return ("< " if p < threshold else "≥ ") + f"{threshold:.1%}"


# ---------------------------------------------------------------------------------------------
# Batching and the classifier
# ---------------------------------------------------------------------------------------------

def encode(tokenizer, text: str, max_length: int) -> list[int]:
    """Token ids of `text`, truncated to `max_length` keeping the start. Empty text is an error."""
    if not text or not text.strip():
        raise ValueError("empty message: there is nothing to classify")
    return tokenizer.encode(text)[:max_length]


def collate(seqs: Sequence[Sequence[int]], pad_id: int, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the batch's longest sequence (capped by `max_length`): (ids, attention_mask)."""
    longest = max(len(s) for s in seqs)
    if max_length is not None:
        longest = min(longest, max_length)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:longest]
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def checkpoint_path(checkpoint: str | os.PathLike | None = None) -> Path:
    return Path(checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT)


@dataclass
class SpamClassifier:
    model: torch.nn.Module
    tokenizer: object
    max_length: int
    labels: tuple[str, ...] = LABELS
    batch_size: int = 16
    threshold: float = SPAM_THRESHOLD  # the operating point on calibrated p_spam
    temperature: float = 1.0  # logits are divided by this before the softmax

    @classmethod
    def load(cls, checkpoint=None, device=None, precision=None, bpe_dir=None, calibrated: bool = True) -> "SpamClassifier":
        """Load once. None -> $LLM_SPAM_CHECKPOINT or checkpoints/spam; missing or not a ham/spam classifier
        (a language model, a corrupt checkpoint, odd metadata) -> CheckpointError naming the command.
        calibrated=False ignores the stored temperature (T = 1): what recalibration starts from."""
        from llm.checkpoint import CheckpointError
        from llm.device import pick_device
        from llm.tokenizer import get_tokenizer
        from llm.weights import load_model

        path = checkpoint_path(checkpoint)
        if not path.exists():  # a file is left to load_model, which says what it is (a pickle, say)
            raise CheckpointError(f"No spam classifier at {path}. {CREATE_HINT}")
        model, config = load_model(path, pick_device(device), precision, hint=CREATE_HINT, task="classification")
        meta = config.get("metadata", {})
        # The metadata is read by classify on every request: a bad value must fail here, not there.
        labels = meta.get("labels", list(LABELS))
        if (not isinstance(labels, list) or len(labels) != config["num_classes"]
                or sorted(map(str, labels)) != sorted(LABELS)):
            raise CheckpointError(f"{path} is a classifier for {repr(labels)[:60]}, not ham/spam. {CREATE_HINT}")
        max_length = meta.get("max_length", model.config.n_positions)
        if type(max_length) is not int or not 1 <= max_length <= model.config.n_positions:
            raise CheckpointError(f"{path}: metadata max_length must be an integer from 1 to the context length "
                                  f"{model.config.n_positions}, not {repr(max_length)[:40]}. {CREATE_HINT}")
        threshold = meta.get("threshold", SPAM_THRESHOLD)
        if not valid_threshold(threshold):
            raise CheckpointError(f"{path}: metadata threshold must be a number strictly between 0 and 1, not "
                                  f"{repr(threshold)[:40]}. {CREATE_HINT}")
        temperature = meta.get("temperature", 1.0) if calibrated else 1.0
        if not valid_temperature(temperature):
            raise CheckpointError(f"{path}: metadata temperature must be a positive number, not {repr(temperature)[:40]}. "
                                  f"Recalibrate with: python -m finetune.spam calibrate --checkpoint {path}")
        return cls(model, get_tokenizer(bpe_dir), max_length, tuple(labels), threshold=float(threshold),
                   temperature=float(temperature))

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw (uncalibrated) logits, (len(texts), 2) float32 on the CPU, columns in `labels` order, in batches.
        Raises ValueError on an empty text."""
        return self.logits_of_ids(self.rows(texts))

    def rows(self, texts: Sequence[str]) -> list[list[int]]:
        """The token rows the classifier reads, one per text (truncated to max_length). Raises ValueError on an
        empty text."""
        return [encode(self.tokenizer, t, self.max_length) for t in texts]

    @torch.no_grad()
    def logits_of_ids(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """`logits` of token id rows (each at most max_length long)."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(seqs), self.batch_size):
            ids, mask = collate(seqs[i:i + self.batch_size], self.tokenizer.eot_id, self.max_length)
            out.append(self.model(ids.to(device), attention_mask=mask.to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, len(self.labels)))

    def probabilities(self, logits: torch.Tensor, calibrated: bool = True) -> list[float]:
        """p_spam from logits: softmax(logits / temperature) (calibrated) or softmax(logits)."""
        t = self.temperature if calibrated else 1.0
        return torch.softmax(logits.double() / t, -1)[:, self.labels.index("spam")].tolist()

    def p_spam(self, texts: Sequence[str], calibrated: bool = True) -> list[float]:
        """Calibrated spam probability per text (calibrated=False: the raw softmax). Raises ValueError on an empty text."""
        return self.probabilities(self.logits(texts), calibrated)

    def classify(self, texts: list[str], threshold: float | None = None) -> list[tuple[str, float]]:
        """("spam" | "ham", calibrated p_spam) per text, at `threshold` (default: the checkpoint's)."""
        t = self.threshold if threshold is None else threshold
        return [(label_of(p, t), p) for p in self.p_spam(texts)]

    @torch.no_grad()
    def explain(self, text: str) -> Explanation:
        """Each word's effect on the calibrated p_spam, by occlusion, in one batched forward pass (see the module
        docstring). Raises ValueError on an empty text."""
        words, seqs = self.explain_rows(text)
        batch, mask = collate(seqs, self.tokenizer.eot_id, self.max_length)
        device = next(self.model.parameters()).device
        return explanation(words, self.probabilities(self.model(batch.to(device), attention_mask=mask.to(device)).float().cpu()))

    def explain_rows(self, text: str) -> tuple[list[str], list[list[int]]]:
        """The words `explain` occludes and the token rows it scores: the message, then the message without each
        word. (The serving engine scores these rows in its shared batches and calls `explanation`.)"""
        ids = encode(self.tokenizer, text, self.max_length)
        # Only the start the classifier reads is occluded: the unread rest never reaches the model.
        kept = len(self.tokenizer.decode(ids))
        words = occlusions(text[:kept], EXPLAIN_MAX_WORDS)
        return [w for w, _ in words], [ids] + [self.tokenizer.encode(v)[:self.max_length] or [self.tokenizer.eot_id]
                                                 for _, v in words]

    def verdicts(self, texts: list[str], threshold: float | None = None) -> list[Verdict]:
        """Verdict(label, p_spam, band, threshold) per text, at `threshold` (default: the checkpoint's)."""
        t = self.threshold if threshold is None else threshold
        return [Verdict.of(p, t) for p in self.p_spam(texts)]
