"""How many positions are unembedded at once, for everything that reads a chunk of positions through
the final norm and unembedding: the top-k predictions and the top-1 logit lens
(extract.top_of_positions) and the lens trajectory (explain/lens.py). Never [B, T, vocabulary]."""

from __future__ import annotations

# Bytes the [positions, vocabulary] float32 arrays a chunk holds at once may take together, per device.
UNEMBED_CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 2**30}
MIN_POSITIONS = 16  # a chunk is never smaller, whatever the vocabulary


def positions_per_chunk(vocabulary: int, on_cuda: bool, arrays: int = 1) -> int:
    """Positions per chunk when each position keeps `arrays` float32 rows of `vocabulary` at once."""
    return max(MIN_POSITIONS, UNEMBED_CHUNK_BYTES["cuda" if on_cuda else "cpu"] // (4 * vocabulary * arrays))
