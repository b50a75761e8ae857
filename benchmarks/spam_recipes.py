"""Spam-classifier recipes, several seeds each, scored on the development sets only (issue #18).

    python benchmarks/spam_recipes.py --base DIR --device cuda [--parallel 8] [--seeds 123 1 2] [--recipes G noise0 ...]
    python benchmarks/spam_recipes.py --combine RUN_SEED123 RUN_SEED1 RUN_SEED2 --device cpu   # ensemble and soup

Each recipe is `python -m finetune.spam train` with the defaults plus a few flags (RECIPES); each run is scored on the
development messages: the natural validation split (517) and challenge sets 4 and 5 (527), with set 3 beside. No test
set (natural test, challenge sets 6 and 7) is read here: they are for the recipe chosen from this table, once.
With both `G` and `old` in the run, it also scores their weight interpolations ("soups") per seed.

A run takes about 17 minutes on a 2-core CPU and 2 minutes on an H100 (eight at a time), so the sweep is a GPU job:
`--parallel` runs that many trainings at once on the one device. Results: benchmarks/results/spam_recipes.json and
spam_recipes.md (means over seeds; what they say is read in the README's spam results). Exits 1 if a run did not
finish (failed, or not launched before --stop-launching-after).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {  # flags on top of `finetune.spam train`'s defaults
    "G": [],  # the default since session 9
    "old": ["--no-authored", "--uci-repeat", "1", "--epochs", "3"],  # the default before #18's data
    "drop01": ["--dropout", "0.1"],
    "lr3e-5": ["--lr", "3e-5"],
    "lr1e-4": ["--lr", "1e-4"],
    "noise0": ["--noise", "0"],
    "syn0": ["--synthetic", "0"],
    "ep3": ["--epochs", "3"],
    "uci3": ["--uci-repeat", "3"],
    "avg999": ["--average", "0.999"],
}
DEV_SETS = ("natural_val", "set4", "set5")  # what decides; set3 is reported beside
RULE = ("a recipe replaces the default (G) only if its mean development errors are at least 2 below G's and its mean "
        "natural-validation errors are not above G's")


def scored_sets() -> dict[str, list[tuple[str, str]]]:
    """The development sets (DEV_SETS) and set 3, reported beside."""
    from finetune.spam_data import DATA_DIR
    from finetune.spam_eval import CHALLENGE_FILE, read_challenge
    from llm.spam import read_split
    sets = {"natural_val": read_split(ROOT / DATA_DIR / "natural" / "validation.csv")}
    for k in (3, 4, 5):
        rows = read_challenge(CHALLENGE_FILE.with_name(f"sms_challenge_{k}.csv"))
        sets[f"set{k}"] = [(lab, t) for lab, t, _ in rows]
    return sets


def score(clf, sets) -> dict:
    """Errors and false positives per set at the classifier's own threshold, and the development total."""
    from llm.spam import LABELS
    return score_predictions({name: [LABELS.index(lab) for lab, _ in clf.classify([t for _, t in rows])]
                              for name, rows in sets.items()}, sets)


def score_predictions(predicted: dict[str, list[int]], sets) -> dict:
    """`score` for predicted class indices per set."""
    from finetune.spam_eval import scores
    from llm.spam import LABELS
    out: dict = {}
    for name, rows in sets.items():
        c = scores([LABELS.index(y) for y, _ in rows], predicted[name])["confusion"]
        out[name] = {"errors": c["fp"] + c["fn"], "fp": c["fp"], "n": len(rows)}
    out["dev"] = sum(out[k]["errors"] for k in DEV_SETS)
    return out


def summary(r: dict) -> str:
    return (f"development errors {r['dev']} (natural val {r['natural_val']['errors']}, set 4 {r['set4']['errors']}, "
            f"set 5 {r['set5']['errors']}; set 3 {r['set3']['errors']})")


def combine(dirs: list[Path], device: str) -> dict:
    """Runs of one recipe at several seeds, alone and combined: the mean of their logits (an ensemble, one forward
    per run) and the mean of their weights (a uniform soup, one forward), each decided at p_spam 0.5 (the default
    threshold; a temperature does not move it)."""
    from llm.spam import SpamClassifier
    sets, clfs = scored_sets(), [SpamClassifier.load(d, device=device) for d in dirs]
    logits_of = lambda clf: {name: clf.logits([t for _, t in rows]) for name, rows in sets.items()}  # noqa: E731
    argmax = lambda logits: {name: lg.argmax(-1).tolist() for name, lg in logits.items()}  # noqa: E731
    each = [logits_of(clf) for clf in clfs]
    results = {str(d): score_predictions(argmax(lg), sets) for d, lg in zip(dirs, each)}
    results["ensemble"] = score_predictions(argmax({n: sum(lg[n] for lg in each) / len(each) for n in sets}), sets)
    states = [clf.model.state_dict() for clf in clfs]
    clfs[0].model.load_state_dict({k: sum(s[k] for s in states) / len(states) for k in states[0]})
    results["soup"] = score_predictions(argmax(logits_of(clfs[0])), sets)
    return results


def score_checkpoint(ckpt: Path, device: str) -> None:
    """One trained run's development errors -> ckpt/dev.json (run in the training's subprocess)."""
    from llm.spam import SpamClassifier
    result = score(SpamClassifier.load(ckpt, device=device), scored_sets())
    meta = json.loads((ckpt / "train_metrics.json").read_text())
    result.update(best_step=meta["best"]["step"], steps=meta["steps"], train_seconds=meta["train_seconds"])
    (ckpt / "dev.json").write_text(json.dumps(result))


def soups(work: Path, seeds, device: str) -> dict:
    """Interpolations of G and old trained with the same seed (the same head initialisation)."""
    from llm.spam import SpamClassifier
    sets, results = scored_sets(), {}
    for seed in seeds:
        a, b = work / f"G_s{seed}", work / f"old_s{seed}"
        if not ((a / "dev.json").exists() and (b / "dev.json").exists()):
            print(f"no soups for seed {seed}: G or old did not finish", flush=True)
            continue
        clf, other = SpamClassifier.load(a, device=device), SpamClassifier.load(b, device=device)
        ga, ob = {k: v.clone() for k, v in clf.model.state_dict().items()}, other.model.state_dict()
        clf.temperature, clf.threshold = 1.0, 0.5  # the interpolation has no calibration of its own: the argmax
        for share in (0.25, 0.5, 0.75):  # share of G
            clf.model.load_state_dict({k: share * ga[k] + (1 - share) * ob[k] for k in ga})
            results[f"soupG{share}_s{seed}"] = {"recipe": f"soupG{share}", "seed": seed, **score(clf, sets)}
    return results


def run_all(args) -> dict:
    """Train every recipe x seed, `args.parallel` at a time (seed-major, so a cut-short sweep has every recipe once)."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    queue = [(recipe, seed) for seed in args.seeds for recipe in args.recipes]
    running, results, failed, t0 = {}, {}, [], time.time()
    # fp32 as on a CPU: no TF32 matrix products on an NVIDIA GPU
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_run), "NVIDIA_TF32_OVERRIDE": "0"}
    while queue or running:
        while queue and len(running) < args.parallel and time.time() - t0 < args.stop_launching_after:
            recipe, seed = queue.pop(0)
            name = f"{recipe}_s{seed}"
            cmd = [sys.executable, "-m", "finetune.spam", "train", "--base", args.base, "--out", str(work / name),
                   "--device", args.device, "--dtype", "fp32", "--seed", str(seed), *RECIPES[recipe]]
            score_cmd = [sys.executable, __file__, "--score", str(work / name), "--device", args.device]
            shell = shlex.join(cmd) + " && " + shlex.join(score_cmd)
            with open(work / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
                running[name] = subprocess.Popen(shell, shell=True, cwd=ROOT, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT)
        if queue and time.time() - t0 >= args.stop_launching_after:
            print(f"not launched (--stop-launching-after): {queue}", flush=True)
            failed += [f"{recipe}_s{seed} (not launched)" for recipe, seed in queue]
            queue = []
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            dev = work / name / "dev.json"
            if proc.returncode == 0 and dev.exists():
                recipe, seed = name.rsplit("_s", 1)
                results[name] = {"recipe": recipe, "seed": int(seed), **json.loads(dev.read_text())}
                r = results[name]
                print(f"{time.time() - t0:6.0f}s {name}: {summary(r)}; trained in {r['train_seconds']} s", flush=True)
            else:
                failed.append(name)
                print(f"{name} failed ({proc.returncode}); log {work / name}.log", flush=True)
        time.sleep(2)
    if "G" in args.recipes and "old" in args.recipes:
        results.update(soups(work, args.seeds, args.device))
    import torch
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    return {"meta": {"device": where, "torch": torch.__version__, "parallel": args.parallel, "rule": RULE,
                     "not_finished": failed}, "runs": results}


def report(results: dict) -> str:
    """The markdown file: what ran where, the rule, and the table (recipes by mean development errors)."""
    meta = results["meta"]
    head = (f"# Spam recipes on the development sets (`benchmarks/spam_recipes.py`)\n\n{meta['device']}, PyTorch "
            f"{meta['torch']}, fp32 (TF32 off), {meta['parallel']} trainings at once. Development errors = natural "
            f"validation (517) + challenge sets 4 (248) and 5 (279); set 3 (190) beside; lower is better. No test set "
            f"is read. The rule: {meta['rule']}.\n"
            + (f"\nNot finished: {', '.join(meta['not_finished'])}.\n" if meta["not_finished"] else "")
            + (f"\n{meta['note']}\n" if meta.get("note") else ""))
    return head + "\n" + table(results["runs"]) + "\n"


def table(runs_by_name: dict) -> str:
    by_recipe = defaultdict(list)
    for r in runs_by_name.values():
        by_recipe[r["recipe"]].append(r)
    lines = ["| recipe | flags | seeds | development errors, mean (per seed, by seed number) | natural validation | set 4 | set 5 | set 3 |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for recipe, runs in sorted(by_recipe.items(), key=lambda kv: sum(r["dev"] for r in kv[1]) / len(kv[1])):
        runs = sorted(runs, key=lambda r: r["seed"])
        mean = lambda f: sum(f(r) for r in runs) / len(runs)  # noqa: E731
        flags = " ".join(RECIPES.get(recipe, [])) or ("(defaults)" if recipe == "G" else "interpolation of G and old")
        lines.append(f"| {recipe} | `{flags}` | {len(runs)} | {mean(lambda r: r['dev']):.1f} "
                     f"({', '.join(str(r['dev']) for r in runs)}) | {mean(lambda r: r['natural_val']['errors']):.2f} | "
                     f"{mean(lambda r: r['set4']['errors']):.1f} | {mean(lambda r: r['set5']['errors']):.1f} | "
                     f"{mean(lambda r: r['set3']['errors']):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="base model directory (default: $LLM_BASE)", default=os.environ.get("LLM_BASE"))
    p.add_argument("--device", default="cuda", help="where every run trains and is scored (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="NAME",
                   help=f"which of RECIPES (default: all: {', '.join(RECIPES)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[123, 1, 2], help="default: 123 1 2")
    p.add_argument("--parallel", type=int, default=8, help="trainings at once on the device")
    p.add_argument("--threads-per-run", type=int, default=2, help="OMP_NUM_THREADS of each run (default: 2)")
    p.add_argument("--stop-launching-after", type=float, default=float("inf"), metavar="SECONDS",
                   help="start no run after this long (for a device lent by the minute); running ones finish")
    p.add_argument("--work-dir", default="/tmp/spam_recipes", help="where the runs' checkpoints and logs go")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/spam_recipes.json"),
                   help="results JSON; the table goes beside it as .md")
    p.add_argument("--combine", nargs="+", type=Path, metavar="CHECKPOINT",
                   help="train nothing: score these runs (one recipe, several seeds) alone, as a logit ensemble and "
                        "as a weight soup, on the development sets")
    p.add_argument("--score", default=None, help=argparse.SUPPRESS)  # internal: score one finished run
    args = p.parse_args(argv)
    if args.score:
        score_checkpoint(Path(args.score), args.device)
        return 0
    if args.combine:
        for name, r in combine(args.combine, args.device).items():
            print(f"{name}: {summary(r)}")
        return 0
    if not args.base:
        p.error("--base DIR or $LLM_BASE: the base model to fine-tune")
    results = run_all(args)
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(report(results))
    return 1 if results["meta"]["not_finished"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
