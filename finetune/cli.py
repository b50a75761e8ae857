"""What every training CLI shares: one way to declare and dispatch subcommands (`set_defaults(func=...)` +
`cli_main`), --help that shows defaults, the thread count, --dtype, errors as one clear line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from finetune.optim import TRAIN_DTYPES


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one and the help text does not explain it already."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def output_dir(text: str) -> str:
    """argparse type: where a run writes its checkpoint, checked before any work: not empty (that would be the
    current directory) and not an existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an output directory, not an empty name")
    path = Path(text)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file; give a directory (it is created if missing)")
    return text


def add_dtype_arg(parser) -> None:
    """`--dtype`, read by `finetune.optim.autocast_dtype` (a parser or an argument group)."""
    parser.add_argument("--dtype", default=None, choices=sorted(TRAIN_DTYPES),
                        help="autocast dtype (default: bf16 on CUDA, fp32 elsewhere; bf16 pays off on CPUs with AVX512-BF16 "
                             "or AMX: 1.7x per instruction fine-tuning step on a 2-core Zen 5); weights stay fp32")


def run_command(args: argparse.Namespace, command: Callable[[argparse.Namespace], int | None],
                expected_errors: tuple[type[BaseException], ...]) -> int:
    """Apply `--threads`, run `command(args)`; an expected error prints `error: ...` and exits 2."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        result = command(args)
    except expected_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0  # a trainer's summary dict means success


def cli_main(parser: argparse.ArgumentParser, argv, expected_errors: tuple[type[BaseException], ...]) -> int:
    """Every training CLI's main(): parse, run the subcommand's `func` (each subparser's set_defaults), exit code."""
    args = parser.parse_args(argv)
    return run_command(args, args.func, expected_errors)
