"""See ddnn_jax/stages/timing.py, the Fig. 6.5 timing stage (also: ddnn bench inference)."""

from ddnn_jax.stages.timing import main

if __name__ == "__main__":
    main()
