"""See ddnn_jax/benchmarks/inference.py (also: ddnn bench inference)."""

from ddnn_jax.stages.timing import main

if __name__ == "__main__":
    main()
