import sys

from ddnn_jax.cli.commands import main

sys.exit(main())
