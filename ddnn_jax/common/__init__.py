"""What every layer may use and that knows nothing of the method: ``errors`` (the one-line
UsageError), ``progress`` (bars on a terminal, quiet in logs), ``runtime`` (the process's XLA
compilation cache, GPU determinism, compile counts) and ``provenance`` (the git commit of a run)."""
