"""The video-size options of the example scripts: real-model defaults, and small ones for ``--tiny`` (CPU)."""

from __future__ import annotations

import argparse

SIZE_OPTIONS = ("frames", "height", "width", "steps")


def add_size_options(parser: argparse.ArgumentParser, real: dict[str, int], tiny: dict[str, int]) -> None:
    """``--frames/--height/--width/--steps``, each defaulting to ``real[name]``, or ``tiny[name]`` with ``--tiny``."""
    for name in SIZE_OPTIONS:
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"default {real[name]}; with --tiny {tiny[name]}")


def parse_with_sizes(parser: argparse.ArgumentParser, real: dict[str, int], tiny: dict[str, int],
                     argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the size options left unset filled from ``tiny`` or ``real``."""
    args = parser.parse_args(argv)
    for name, value in (tiny if args.tiny else real).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args
