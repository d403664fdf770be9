import sys

from ddnn_jax.cli import main

sys.exit(main())
