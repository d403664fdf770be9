"""The ``ddnn`` command line: argparse only; each command builds a config and calls one entry.

Modules, bottom to top: ``flags`` (value types, parser classes, shared flag groups), ``configs``
(configs and the runtime from parsed flags), ``bench`` (the benchmarks by name), ``parser`` (the
subcommands), ``commands`` (one handler per subcommand), ``entry`` (``main``: exit statuses).
``device`` is the exception: ``ddnn edge --engine onnx`` parsed and run without importing JAX,
which every other command needs (so the rest loads only when a command line asks for it).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["build_parser", "configure_runtime", "main"]


def main(argv: list[str] | None = None) -> int:
    """Runs ``ddnn ARGV`` (default: the process's arguments); returns its exit status."""
    from ddnn_jax.cli import device

    args = sys.argv[1:] if argv is None else list(argv)
    if device.wants_device_edge(args):
        return device.main(args)
    from ddnn_jax.cli.entry import main as run_command

    return run_command(argv)


def __getattr__(name: str) -> Any:
    """``build_parser`` and ``configure_runtime``, imported (with JAX) on first use."""
    if name == "build_parser":
        from ddnn_jax.cli.parser import build_parser

        return build_parser
    if name == "configure_runtime":
        from ddnn_jax.cli.configs import configure_runtime

        return configure_runtime
    raise AttributeError(f"module 'ddnn_jax.cli' has no attribute '{name}'")
