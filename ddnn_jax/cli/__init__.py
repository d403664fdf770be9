"""The ``ddnn`` command line: argparse only; each command builds a config and calls one entry.

Modules, bottom to top: ``flags`` (value types, parser classes, shared flag groups), ``configs``
(configs and the runtime from parsed flags), ``bench`` (the benchmarks by name), ``parser`` (the
subcommands), ``commands`` (one handler per subcommand), ``entry`` (``main``: exit statuses).
"""

from ddnn_jax.cli.configs import configure_runtime
from ddnn_jax.cli.entry import main
from ddnn_jax.cli.parser import build_parser

__all__ = ["build_parser", "configure_runtime", "main"]
