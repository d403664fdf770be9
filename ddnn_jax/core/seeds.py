"""The seeds a run, a router family or a bottleneck may take: those JAX's keys tell apart.

``jax.random.key`` keeps the low 32 bits of a seed (without 64-bit mode): seed 2**32 gives seed
0's key, so a larger seed would silently repeat a smaller one's run.
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1


def seed_problem(flag: str, seed: int) -> str | None:
    """Why ``seed`` cannot seed ``flag``, in one line, or None when it can."""
    if not 0 <= seed <= MAX_SEED:
        return f"{flag} must lie in 0..{MAX_SEED} (JAX keys keep 32 bits), got {seed}"
    return None
