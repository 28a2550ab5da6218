"""What one rank, and each of its DataLoader workers, reads: training and validation batches of token windows.

Kept free of Lightning: a DataLoader worker started by spawn or forkserver (Python 3.14's default on Linux, macOS's
already) imports this module to unpickle its dataset, and each import it needs delays the first batch. Everything
the workers receive pickles to a few KB: PackedWindows sends file names, Mixture leaves its caches behind.
The order of the stream is described in lm.data.datamodule.
"""

import itertools

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lm.data.mixture import Mixture
from lm.data.packed import PackedWindows
from lm.errors import UserError


def worker_shard() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def as_pair(tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, seq_len + 1) windows -> inputs and next-token targets, each a contiguous (B, seq_len) int64 tensor.

    Both live in one storage, so a DataLoader worker ships one shared-memory segment per batch, not two
    (per-segment cost dominates: this doubles worker throughput).
    """
    pair = torch.empty((2, tokens.shape[0], tokens.shape[1] - 1), dtype=torch.int64)
    pair[0], pair[1] = torch.from_numpy(tokens[:, :-1]), torch.from_numpy(tokens[:, 1:])
    return pair[0], pair[1]


class TrainBatches(IterableDataset):
    """Endless mixture batches for one rank, from global sample `start` on."""

    def __init__(
        self,
        windows: list[PackedWindows],
        mixture: Mixture,
        batch_size: int,
        start: int,
        rank: int,
        world_size: int,
    ):
        self.windows, self.mixture, self.batch_size = windows, mixture, batch_size
        self.start, self.rank, self.world_size = start, rank, world_size

    def __iter__(self):
        worker, workers = worker_shard()
        start = self.start  # the datamodule moves it on for the next pass over the loader
        for step in itertools.count(worker, workers):
            first = start + (step * self.world_size + self.rank) * self.batch_size
            sources, indices = self.mixture.locate(first, self.batch_size)
            tokens = np.empty((self.batch_size, self.mixture.seq_len + 1), dtype=np.int64)
            for source in np.unique(sources):
                rows = sources == source
                tokens[rows] = self.windows[source].batch(indices[rows])
            yield as_pair(tokens)


class ValBatches(IterableDataset):
    """The first `num_batches` batches of a val split, in order, split over ranks and workers.

    Every rank runs the same number of batches (the count is rounded down to a multiple of the world size):
    under DDP and FSDP each forward pass is a collective, and a rank with one batch more would wait forever.
    """

    def __init__(self, windows: PackedWindows, batch_size: int, num_batches: int, rank: int, world_size: int):
        self.windows, self.batch_size, self.rank, self.world_size = windows, batch_size, rank, world_size
        available = min(num_batches, -(-len(windows) // batch_size))
        self.num_batches = available - available % world_size
        if not self.num_batches:
            raise UserError(
                f"the val split of {windows.directory} has {available} batch(es) for {world_size} ranks; "
                "raise data.val_batches (or prepare with a larger --val_fraction)"
            )

    def __iter__(self):
        worker, workers = worker_shard()
        for batch in range(self.rank + worker * self.world_size, self.num_batches, self.world_size * workers):
            first = batch * self.batch_size
            yield as_pair(self.windows.batch(range(first, min(first + self.batch_size, len(self.windows)))))
