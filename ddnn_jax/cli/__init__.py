"""The ``ddnn`` command line: argparse only; each command builds a config and calls one entry."""

from ddnn_jax.cli.commands import build_parser, configure_runtime, main

__all__ = ["build_parser", "configure_runtime", "main"]
