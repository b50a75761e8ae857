"""argparse types shared by every command line (the library's, the server's and the trainers'): a bad number is
refused in one line before any work starts, saying what is accepted."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def checked(convert: Callable[[str], float], ok: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    """An argparse type: `convert(text)`, accepted when `ok(value)`, else "<wanted>, not '<text>'"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{wanted}, not {text!r}")
        return value
    parse.__name__ = wanted
    return parse


positive_int = checked(int, lambda v: v >= 1, "a whole number of at least 1")  # epochs, batch sizes, threads, ...
non_negative_int = checked(int, lambda v: v >= 0, "a whole number of at least 0")  # where 0 means "off"
fraction = checked(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")  # probabilities, shares (NaN refused)
positive_float = checked(float, lambda v: 0 < v < math.inf, "a number above 0")  # learning rates, minutes
port_number = checked(int, lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")
