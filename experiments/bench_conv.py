"""See ddnn_jax/benchmarks/conv_in_loop.py (also: ddnn bench conv)."""

from ddnn_jax.benchmarks.conv_in_loop import main

if __name__ == "__main__":
    main()
