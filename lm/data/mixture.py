"""Which window of which source is global sample k: a pure function of (seed, config, k).

Source choice. Sample k takes the source whose slice of [0, 1) (slices sized by the mixture weights at k) holds
u_k = frac(seed_offset + k / golden_ratio), computed exactly in uint64. The golden-ratio (Weyl) sequence is the
most evenly spread sequence there is: over any n consecutive samples each source's count is within O(log n)
of n * weight, so shares hold to a fraction of a percentage point after a few thousand windows, with no
randomness to get unlucky with and no state beyond k. Every sample has seq_len tokens, so shares in samples
are shares in tokens.

Window choice. A source's j-th sample is window perm_e[j mod n] of its n windows, where e = j // n is the
source's epoch and perm_e a permutation seeded by (seed, crc32(source name), e): each epoch visits every
window once, in a new order, and adding a source does not reshuffle the others.

Schedule. Weights may move linearly from `weights` to `schedule.weights` between two token counts (counted
over all sources, all ranks): a curriculum. Positions are recomputed from k (vectorised, ~50 M samples/s), so
resuming needs only the number of samples consumed.

Base. A run that changes its mixture when it resumes (`data.allow_mixture_change`) continues each source from
where it was: the mixture then starts at `base = (k0, samples of each source before k0)`, and sample k >= k0 takes
its source from the new weights and the source's next window from its count so far.
"""

import zlib
from dataclasses import dataclass

import numpy as np

from lm.errors import UserError

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio
CHUNK = 1 << 20  # samples per vectorised counting step


@dataclass
class Schedule:
    """Move the mixture linearly from the datamodule's `weights` to these `weights`."""

    weights: dict[str, float]
    """Source -> weight reached at end_tokens and kept after it."""
    start_tokens: float
    """Tokens (all sources, all ranks) at which the move starts."""
    end_tokens: float
    """Tokens at which it ends."""


def normalized(weights: dict[str, float], names: list[str], key: str) -> np.ndarray:
    """Weights in the order of `names`, summing to 1; one-line errors naming the offending key."""
    unknown = set(weights) - set(names)
    if unknown:
        raise UserError(f"{key} names unknown source '{sorted(unknown)[0]}' (sources: {', '.join(names)})")
    missing = [name for name in names if name not in weights]
    if missing:
        raise UserError(f"{key} has no weight for source '{missing[0]}' (give it 0 to leave it out)")
    for name in names:
        if not np.isfinite(weights[name]) or weights[name] < 0:
            raise UserError(f"{key}['{name}'] = {weights[name]} must be a finite number >= 0")
    values = np.array([weights[name] for name in names], dtype=np.float64)
    if values.sum() <= 0:
        raise UserError(f"{key} must sum to a positive number, got {values.sum()}")
    return values / values.sum()


class Mixture:
    """Maps global sample indices to (source id, window index) for sources of `windows[name]` windows each."""

    def __init__(
        self,
        windows: dict[str, int],
        weights: dict[str, float] | None,
        seed: int,
        seq_len: int,
        schedule: Schedule | None = None,
        base: tuple[int, dict[str, int]] = (0, {}),
    ):
        self.names = list(windows)
        for name, count in windows.items():
            if count <= 0:
                raise UserError(f"source '{name}' has no windows")
        self.sizes = np.array([windows[name] for name in self.names], dtype=np.int64)
        self.start = normalized(
            weights if weights is not None else dict.fromkeys(self.names, 1.0), self.names, "data.weights"
        )
        self.end = self.start if schedule is None else normalized(schedule.weights, self.names, "data.schedule.weights")
        if schedule is not None and not 0 <= schedule.start_tokens <= schedule.end_tokens:
            raise UserError("data.schedule needs 0 <= start_tokens <= end_tokens")
        self.schedule, self.seed, self.seq_len = schedule, seed, seq_len
        self.offset = np.uint64(int.from_bytes(np.random.default_rng(seed).bytes(8), "little"))
        self.salts = [zlib.crc32(name.encode()) for name in self.names]
        self.base = (int(base[0]), np.array([base[1].get(name, 0) for name in self.names], dtype=np.int64))
        self._counted = self.base  # (k, samples per source before k)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, permutation)

    def __getstate__(self) -> dict:
        # DataLoader workers get the mixture; its caches (a permutation per source: 8 bytes per window) stay here
        return {**self.__dict__, "_counted": self.base, "_perms": {}}

    def weights(self, samples: np.ndarray) -> np.ndarray:
        """(len(samples), n_sources) mixture weights in force at each global sample index."""
        if self.schedule is None:
            return np.broadcast_to(self.start, (len(samples), len(self.names)))
        span = max(self.schedule.end_tokens - self.schedule.start_tokens, 1)
        frac = np.clip((samples * self.seq_len - self.schedule.start_tokens) / span, 0.0, 1.0)[:, None]
        return (1 - frac) * self.start + frac * self.end

    def sources(self, samples: np.ndarray) -> np.ndarray:
        """Source id of each global sample index (pure function of the index)."""
        with np.errstate(over="ignore"):
            u = (self.offset + samples.astype(np.uint64) * GOLDEN) >> np.uint64(11)
        u = u.astype(np.float64) / 2.0**53
        cdf = np.cumsum(self.weights(samples), axis=1)
        cdf[:, -1] = np.inf  # rounding never pushes u past the last source
        return (u[:, None] >= cdf).sum(axis=1)

    def counts(self, k: int) -> np.ndarray:
        """Samples of each source among global samples [0, k) (k >= the base); incremental when k only grows."""
        done, counts = self._counted
        if k < done:
            done, counts = self.base
        counts = counts.copy()
        for first in range(done, k, CHUNK):
            chunk = self.sources(np.arange(first, min(first + CHUNK, k), dtype=np.int64))
            counts += np.bincount(chunk, minlength=len(self.names))
        self._counted = (k, counts)
        return counts

    def locate(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids, window indices) of global samples [first, first + count)."""
        before = self.counts(first)
        sources = self.sources(np.arange(first, first + count, dtype=np.int64))
        windows = np.empty(count, dtype=np.int64)
        for source in np.unique(sources):
            rows = np.flatnonzero(sources == source)
            ordinals = before[source] + np.arange(len(rows))  # this source's j-th sample overall
            epochs, slots = np.divmod(ordinals, self.sizes[source])
            for epoch in np.unique(epochs):
                windows[rows[epochs == epoch]] = self.permutation(int(source), int(epoch))[slots[epochs == epoch]]
        self._counted = (first + count, before + np.bincount(sources, minlength=len(self.names)))
        return sources, windows

    def permutation(self, source: int, epoch: int) -> np.ndarray:
        """Window order of `source` in `epoch`, seeded by (seed, source name, epoch); the latest one is cached."""
        cached = self._perms.get(source)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.salts[source], epoch])
            cached = (epoch, rng.permutation(int(self.sizes[source])))
            self._perms[source] = cached
        return cached[1]
