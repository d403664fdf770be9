"""See ddnn_jax/benchmarks/router_grid.py (also: ddnn bench router)."""

from ddnn_jax.benchmarks.router_grid import main

if __name__ == "__main__":
    main()
