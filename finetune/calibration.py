"""Calibration and the operating point of the spam classifier: a temperature fitted on validation data,
ECE / Brier / reliability bins, and the threshold for a target precision (used by `finetune.spam`)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from llm.checkpoint import update_metadata
from llm.spam import LABELS, SpamClassifier, SpamDataError, valid_temperature

# ---------------------------------------------------------------------------------------------
# calibration and the operating point
# ---------------------------------------------------------------------------------------------

TEMPERATURE_RANGE = (0.05, 20.0)  # the search interval of the temperature
ECE_BINS = 15


def nll(logits: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> float:
    return F.cross_entropy(logits.double() / temperature, y).item()


def fit_temperature(logits: torch.Tensor, y: Sequence[int], steps: int = 80) -> float:
    """The T minimising the NLL of softmax(logits / T): golden-section search over log T in TEMPERATURE_RANGE.

    The NLL is convex in 1/T, hence unimodal in log T, so the search finds the optimum (or the interval's end
    when the validation set is separable and the optimum is T -> 0). Milliseconds for thousands of messages."""
    logits, y = logits.double(), torch.as_tensor(list(y), dtype=torch.long)
    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, y, math.exp(a)), nll(logits, y, math.exp(b))
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def ece(p: Sequence[float], y: Sequence[int], bins: int = ECE_BINS) -> float:
    """Expected calibration error of p_spam: 15 equal-width bins over [0, 1] (1.0 in the last), the
    message-weighted mean of |fraction spam - mean p_spam| per bin."""
    total, n = 0.0, len(p)
    for lo_, hi_, n_b, mean_p, frac in reliability_bins(p, y, bins):
        total += n_b / n * abs(frac - mean_p)
    return total


def reliability_bins(p: Sequence[float], y: Sequence[int], bins: int = ECE_BINS) -> list[tuple[float, float, int, float, float]]:
    """(bin low, bin high, messages, mean p_spam, fraction spam) per non-empty equal-width bin."""
    groups: list[list[int]] = [[] for _ in range(bins)]
    for i, q in enumerate(p):
        groups[min(int(q * bins), bins - 1)].append(i)
    return [(b / bins, (b + 1) / bins, len(g), sum(p[i] for i in g) / len(g), sum(y[i] for i in g) / len(g))
            for b, g in enumerate(groups) if g]


def brier(p: Sequence[float], y: Sequence[int]) -> float:
    """Mean squared error of p_spam against the 0/1 label."""
    return sum((q - t) ** 2 for q, t in zip(p, y)) / len(p)


def threshold_for_precision(p: Sequence[float], y: Sequence[int], target: float) -> tuple[float, float, bool]:
    """The lowest threshold t (one of the p values) whose precision (p >= t counted spam) is >= target.

    Returns (t, its precision, True); when no threshold reaches the target, the one with the highest precision
    (the lowest such) and False. t is kept strictly inside (0, 1)."""
    order = sorted(range(len(p)), key=lambda i: -p[i])
    tp = fp = 0
    best, found = None, None
    i = 0
    while i < len(order):  # messages with equal p go in together: a threshold cannot split them
        q = p[order[i]]
        while i < len(order) and p[order[i]] == q:
            tp += y[order[i]]
            fp += 1 - y[order[i]]
            i += 1
        prec = tp / (tp + fp)
        if prec >= target:
            found = (q, prec)
        if best is None or prec >= best[1]:
            best = (q, prec)
    t, prec = found or best
    return min(max(t, 1e-6), 1 - 1e-6), prec, found is not None


def _logit(t: float) -> float:
    return math.log(t / (1 - t))


def calibrate_checkpoint(checkpoint, rows: Sequence[tuple[str, str]], *, target_precision: float | None = None,
                         threshold: float | None = None, device=None, bpe_dir=None, quiet: bool = False) -> dict:
    """Fit the temperature on `rows` (the validation set) and set the threshold; write both into the
    checkpoint's metadata atomically, weights untouched. Returns the metadata written.

    The threshold: `threshold` as given; else the lowest reaching `target_precision` on the calibrated
    validation probabilities; else the stored one moved to the new temperature so that every decision
    stays the same (a threshold is on calibrated probabilities, and p = 0.5 never moves)."""
    if not rows:
        raise SpamDataError("calibration needs validation messages; the validation split is empty")
    clf = SpamClassifier.load(checkpoint, device, "fp32", bpe_dir, calibrated=False)  # a bad stored T is what we fix
    logits = clf.logits([t for _, t in rows])
    y = [LABELS.index(lab) for lab, _ in rows]
    spam = clf.labels.index("spam")
    if clf.labels.index("ham") != 0:  # keep (ham, spam) column order for the NLL
        logits = logits[:, [clf.labels.index("ham"), spam]]
    yt = torch.tensor(y)
    temperature = fit_temperature(logits, y)
    clf.labels, clf.temperature = LABELS, temperature
    p = clf.probabilities(logits)
    meta = {"temperature": temperature, "calibration": {
        "messages": len(rows), "val_nll_before": nll(logits, yt), "val_nll_after": nll(logits, yt, temperature),
        "val_ece_before": ece(clf.probabilities(logits, calibrated=False), y), "val_ece_after": ece(p, y)}}
    if threshold is not None:
        meta.update(threshold=threshold, threshold_source="--threshold")
    elif target_precision is not None:
        t, prec, met = threshold_for_precision(p, y, target_precision)
        meta.update(threshold=t, threshold_source=f"lowest reaching validation precision {target_precision}",
                    target_precision=target_precision, target_precision_met=met, val_precision_at_threshold=prec)
        if not met and not quiet:
            print(f"warning: no threshold reaches validation precision {target_precision}; using {t:.6f}, whose "
                  f"precision {prec:.4f} is the highest", file=sys.stderr)
    else:
        old_t = clf.threshold  # on probabilities calibrated with the old temperature (config metadata)
        from llm.checkpoint import read_config
        old_temp = read_config(checkpoint).get("metadata", {}).get("temperature", 1.0)
        old_temp = old_temp if valid_temperature(old_temp) else 1.0
        meta["threshold"] = 1 / (1 + math.exp(-_logit(old_t) * old_temp / temperature))
    if not quiet:
        c = meta["calibration"]
        print(f"temperature {temperature:.4f} (validation NLL {c['val_nll_before']:.4f} -> {c['val_nll_after']:.4f}, "
              f"ECE {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f}); threshold {meta['threshold']:.6f}; "
              f"written to {Path(checkpoint) / 'config.json'}")
    update_metadata(checkpoint, meta)
    return meta
