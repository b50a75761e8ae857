"""What `python -m finetune.spam eval` reports beyond accuracy: the scores, the TF-IDF baseline, the plots,
the held-out challenge set of messages written today and the robustness variants."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from finetune.calibration import ECE_BINS, brier, ece, reliability_bins
from llm.spam import BANDS, LABELS, SpamClassifier, SpamDataError, band_of, read_split

# ---------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------

def score_set(clf: SpamClassifier, texts: Sequence[str], y: Sequence[int], threshold: float):
    """(scores with timing and the calibration block, calibrated p, uncalibrated p) of one labelled set: one
    forward pass, then ECE and Brier before and after calibration and how many messages fall in each band."""
    t0 = time.perf_counter()
    logits = clf.logits(list(texts))
    p, p_raw = clf.probabilities(logits), clf.probabilities(logits, calibrated=False)
    out = scores(y, [int(q >= threshold) for q in p])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["calibration"] = {"ece_before": ece(p_raw, y), "ece_after": ece(p, y),
                          "brier_before": brier(p_raw, y), "brier_after": brier(p, y),
                          "bands": {b: sum(band_of(q, threshold) == b for q in p) for b in BANDS}}
    return out, p, p_raw


def scores(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    tp = sum(t == 1 and p == 1 for t, p in zip(y_true, y_pred))
    tn = sum(t == 0 and p == 0 for t, p in zip(y_true, y_pred))
    fp = sum(t == 0 and p == 1 for t, p in zip(y_true, y_pred))
    fn = sum(t == 1 and p == 0 for t, p in zip(y_true, y_pred))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(y_true), "accuracy": (tp + tn) / len(y_true), "precision": precision, "recall": recall, "f1": f1,
            "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}}


def tfidf_baseline(train_rows, test_rows) -> dict:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise SystemExit(f"the baseline needs scikit-learn (a dev dependency): pip install -r requirements-dev.txt ({e})")
    vec = TfidfVectorizer()
    x = vec.fit_transform([t for _, t in train_rows])
    clf = LogisticRegression(max_iter=1000).fit(x, [LABELS.index(lab) for lab, _ in train_rows])
    pred = clf.predict(vec.transform([t for _, t in test_rows])).tolist()
    return scores([LABELS.index(lab) for lab, _ in test_rows], pred)


def plot_confusion(c: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(m, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(m[i][j]), ha="center", va="center", color="black", fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABELS, yticklabels=LABELS, xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(curves: dict[str, Sequence[float]], y: Sequence[int], path: Path, title: str) -> None:
    """Reliability diagram: fraction spam against mean p_spam per bin (ECE_BINS equal-width bins), one curve per
    entry of `curves`, the diagonal being perfect calibration; the legend gives each curve's ECE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for (name, p), marker in zip(curves.items(), "os^v"):
        b = reliability_bins(p, y)
        ax.plot([r[3] for r in b], [r[4] for r in b], marker=marker, label=f"{name}, ECE {ece(p, y):.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted p_spam", ylabel="fraction spam", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# eval: the held-out challenge set and the robustness variants
# ---------------------------------------------------------------------------------------------

# The default challenge set: the newest one written blind (to the issue's own brief), scored after the recipe was chosen
# (finetune/data/README.md has all six).
CHALLENGE_FILE = Path(__file__).resolve().parent / "data" / "sms_challenge_6.csv"


def read_challenge(path: str | Path) -> list[tuple[str, str, str]]:
    """(label, text, category) rows of a challenge CSV with columns label,text,category."""
    import csv
    import io

    from llm.messages_file import MessagesFileError, decode_text
    path = Path(path)
    if not path.is_file():
        raise SpamDataError(f"{path} does not exist. Pass --challenge PATH (columns label,text,category) or --no-challenge.")
    try:  # the encodings `predict --file` reads (UTF-8, UTF-16 with a BOM, Windows-1252), binary refused
        text, _ = decode_text(path.name, path.read_bytes())
    except MessagesFileError as e:
        raise SpamDataError(f"{path}: {e}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"label", "text", "category"} - set(reader.fieldnames or ())
    if missing:
        raise SpamDataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(sorted(missing))}; "
                            "a challenge file has the columns label,text,category")
    rows = [((r["label"] or "").strip(), r["text"] or "", (r["category"] or "").strip()) for r in reader]
    bad = [i + 2 for i, (lab, t, _) in enumerate(rows) if lab not in LABELS or not t.strip()]
    if bad:
        raise SpamDataError(f"{path}: line {', '.join(map(str, bad[:10]))}: the label must be ham or spam and the text non-empty")
    if not rows:
        raise SpamDataError(f"{path} has no messages")
    return rows


def challenge_report(clf: SpamClassifier, rows: Sequence[tuple[str, str, str]], out_dir: Path,
                     source: str = "") -> tuple[dict, list[float]]:
    """Scores, calibration (ECE/Brier before and after, bands), per-category accuracy and every misclassified
    message of a (label, text, category) set; draws reliability_challenge.png. Returns (report, calibrated p_spam)."""
    threshold = clf.threshold
    y = [LABELS.index(r[0]) for r in rows]
    out, p, p_raw = score_set(clf, [r[1] for r in rows], y, threshold)
    out["source"] = source
    cats: dict[str, dict] = {}
    for (lab, _, cat), q in zip(rows, p):
        c = cats.setdefault(cat, {"label": lab, "n": 0, "correct": 0})
        if c["label"] != lab:
            c["label"] = "mixed"
        c["n"] += 1
        c["correct"] += (q >= threshold) == (lab == "spam")
    for c in cats.values():
        c["accuracy"] = c["correct"] / c["n"]
    out["per_category"] = dict(sorted(cats.items(), key=lambda kv: (kv[1]["label"], kv[0])))
    out["errors"] = [{"label": lab, "category": cat, "p_spam": round(q, 4), "text": t}
                     for (lab, t, cat), q in zip(rows, p) if (q >= threshold) != (lab == "spam")]
    plot_reliability({"uncalibrated": p_raw, f"calibrated (T={clf.temperature:.2f})": p}, y,
                     out_dir / "reliability_challenge.png", f"challenge set (n={len(y)})")
    return out, p


def print_challenge(c: dict) -> None:
    cal = c["calibration"]
    print(f"challenge set ({c['source']}, n={c['n']}): accuracy {c['accuracy']:.4f}  precision {c['precision']:.4f}  "
          f"recall {c['recall']:.4f}  F1 {c['f1']:.4f}  ({c['confusion']})")
    print(f"  ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}   Brier {cal['brier_before']:.4f} -> "
          f"{cal['brier_after']:.4f}   bands {', '.join(f'{b} {n}' for b, n in cal['bands'].items())}")
    print("  per category:")
    for name, k in c["per_category"].items():
        print(f"    {k['label']:4s} {name:22s} {k['correct']:3d}/{k['n']:<3d} {k['accuracy']:.3f}")
    print(f"  misclassified ({len(c['errors'])}):")
    for e in c["errors"]:
        short = e["text"] if len(e["text"]) <= 90 else e["text"][:87] + "..."
        print(f"    {e['label']:4s} p_spam {e['p_spam']:.4f}  [{e['category']}] {short!r}")


def robustness_report(clf: SpamClassifier, sets: dict[str, tuple[Sequence[tuple], Sequence[float]]]) -> dict:
    """Accuracy of each finetune.robustness transform beside the clean accuracy, per set.

    `sets`: name -> (rows (label, text, ...), clean calibrated p_spam). Per variant: accuracy, F1, how many
    decisions changed against the clean text, the confusion counts, and the seconds of its forward pass."""
    from finetune.robustness import TRANSFORMS, variants
    threshold = clf.threshold
    out: dict = {"transforms": list(TRANSFORMS), "sets": {}}
    for set_name, (rows, p_clean) in sets.items():
        y = [LABELS.index(r[0]) for r in rows]
        clean = [int(q >= threshold) for q in p_clean]
        s = scores(y, clean)
        res = {"clean": {"accuracy": s["accuracy"], "f1": s["f1"], "confusion": s["confusion"]}}
        for name in TRANSFORMS:
            t0 = time.perf_counter()
            pred = [int(q >= threshold) for q in clf.p_spam([r[1] for r in variants(rows, name)])]
            v = scores(y, pred)
            res[name] = {"accuracy": v["accuracy"], "f1": v["f1"], "confusion": v["confusion"], "delta": v["accuracy"] - s["accuracy"],
                         "flipped": sum(a != b for a, b in zip(pred, clean)), "seconds": round(time.perf_counter() - t0, 1)}
        out["sets"][set_name] = {"n": len(rows), **res}
    return out


def print_robustness(r: dict) -> None:
    names = list(r["sets"])
    print("robustness (accuracy; change against clean; decisions flipped):")
    print(f"  {'variant':12s}" + "".join(f" {n + ' (n=' + str(r['sets'][n]['n']) + ')':>34s}" for n in names))
    for v in ["clean", *r["transforms"]]:
        cells = []
        for n in names:
            x = r["sets"][n][v]
            cells.append(f"{x['accuracy']:.4f}" if v == "clean" else
                         f"{x['accuracy']:.4f} ({x['delta']:+.4f}, {x['flipped']:3d} flips, {x['seconds']:4.1f}s)")
        print(f"  {v:12s}" + "".join(f" {c:>34s}" for c in cells))


# ---------------------------------------------------------------------------------------------
# the eval command
# ---------------------------------------------------------------------------------------------

def run_eval(args) -> dict:
    clf = SpamClassifier.load(args.checkpoint, args.device, args.precision, args.bpe_dir)
    ckpt = Path(args.checkpoint or clf_path_default())
    out_dir = Path(args.out or ckpt)
    threshold = clf.threshold
    result = {"checkpoint": str(ckpt), "threshold": threshold, "temperature": clf.temperature}
    rows_fmt = "{:10s} {:22s} {:>6s} {:>9s} {:>9s} {:>7s} {:>7s}"
    challenge_rows = None if args.no_challenge else read_challenge(args.challenge)  # a bad file fails before the passes
    clean = {}  # set name -> (rows, calibrated p_spam), for the robustness variants
    t_start = time.perf_counter()
    print(rows_fmt.format("test set", "model", "n", "accuracy", "precision", "recall", "F1"))
    for set_name in ("natural", "balanced"):
        d = Path(args.data_dir) / set_name
        train_rows, test_rows = read_split(d / "train.csv"), read_split(d / "test.csv")
        y = [LABELS.index(lab) for lab, _ in test_rows]
        ours, p, p_raw = score_set(clf, [t for _, t in test_rows], y, threshold)
        clean[set_name] = (test_rows, p)
        plot_reliability({"uncalibrated": p_raw, f"calibrated (T={clf.temperature:.2f})": p}, y,
                         out_dir / f"reliability_{set_name}.png", f"{set_name} test (n={len(y)})")
        ours["errors"] = [{"label": lab, "p_spam": round(q, 4), "text": t}
                          for (lab, t), q in zip(test_rows, p) if (q >= threshold) != (lab == "spam")]
        base = tfidf_baseline(train_rows, test_rows)
        plot_confusion(ours["confusion"], out_dir / f"confusion_{set_name}.png", f"{set_name} test (n={len(y)})")
        result[set_name] = {"gpt2_classifier": ours, "tfidf_logreg": base}
        for name, s in (("GPT-2 classifier", ours), (f"TF-IDF+LR ({set_name} train)", base)):
            print(rows_fmt.format(set_name, name, str(s["n"]), f"{s['accuracy']:.4f}", f"{s['precision']:.4f}",
                                  f"{s['recall']:.4f}", f"{s['f1']:.4f}"))
    print(f"calibration (T={clf.temperature:.4f}, threshold {threshold:.4f}; ECE over {ECE_BINS} equal-width bins)")
    for set_name in ("natural", "balanced"):
        c = result[set_name]["gpt2_classifier"]["calibration"]
        print(f"  {set_name:9s} ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}   "
              f"Brier {c['brier_before']:.4f} -> {c['brier_after']:.4f}   "
              f"bands {', '.join(f'{b} {n}' for b, n in c['bands'].items())}")
    if challenge_rows is not None:
        result["challenge"], p_challenge = challenge_report(clf, challenge_rows, out_dir, str(args.challenge))
        clean["challenge"] = (challenge_rows, p_challenge)
        print_challenge(result["challenge"])
    if args.robustness:
        sets = {k: clean[k] for k in ("natural", "challenge") if k in clean}
        t0 = time.perf_counter()
        result["robustness"] = robustness_report(clf, sets)
        result["robustness"]["seconds"] = round(time.perf_counter() - t0, 1)
        print_robustness(result["robustness"])
        print(f"  robustness pass: {result['robustness']['seconds']:.1f} s")
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    path = out_dir / "eval_metrics.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    extra = "" if args.no_challenge else f", {out_dir / 'reliability_challenge.png'}"
    print(f"metrics {path}; confusion matrices {out_dir / 'confusion_natural.png'}, {out_dir / 'confusion_balanced.png'}; "
          f"reliability diagrams {out_dir / 'reliability_natural.png'}, {out_dir / 'reliability_balanced.png'}{extra}; "
          f"eval {result['seconds']:.1f} s")
    return result


def clf_path_default():
    from llm.spam import checkpoint_path
    return checkpoint_path(None)
