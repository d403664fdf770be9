"""See ddnn_jax/benchmarks/train.py (also: ddnn bench train)."""

from ddnn_jax.benchmarks.train import main

if __name__ == "__main__":
    main()
