"""What every training CLI shares: --help that shows defaults, the thread count, errors as one clear line."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where there is one and the help text does not explain it already."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def run_command(args: argparse.Namespace, command: Callable[[argparse.Namespace], int | None],
                expected_errors: tuple[type[BaseException], ...]) -> int:
    """Apply `--threads`, run `command(args)`; an expected error prints `error: ...` and exits 2."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return command(args) or 0
    except expected_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
