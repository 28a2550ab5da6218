"""TokenDataModule: prepared sources -> weighted, resumable (x, y) batches for Lightning.

Order of the stream. Global sample k is `Mixture.locate(k)`. Rank r of W, at its local micro-batch t, reads
global samples [(t * W + r) * B, (t * W + r + 1) * B): ranks read disjoint windows, and together they read
exactly what one process with the same B would, in the same order (one process's step t * W + r). DataLoader
worker w of N builds local batches t = start + w, start + w + N, ...; the DataLoader returns them in order.

Resume. `state_dict()` stores the global samples consumed by training, counted in `on_after_batch_transfer`
(main process, once per batch training actually received), not what workers have prefetched. Everything else
(per-source positions, epochs, schedule position) is a function of that count, recomputed on load, and stored
alongside only for humans. A resumed run continues the same stream, with or without gradient accumulation.

Validation. One loader per source (`source_names` order), the first `val_batches` batches of windows of its
val split in file order: the same windows at every validation.
"""

import itertools
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lm.data.mixture import Mixture, Schedule
from lm.data.packed import PackedWindows, check_vocab, read_manifest
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
    """Endless mixture batches for one rank, starting at its local micro-batch `start_step`."""

    def __init__(
        self,
        windows: list[PackedWindows],
        mixture: Mixture,
        batch_size: int,
        start_step: int,
        rank: int,
        world_size: int,
    ):
        self.windows, self.mixture, self.batch_size = windows, mixture, batch_size
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def first_sample(self, step: int) -> int:
        """Global index of the first sample of this rank's local micro-batch `step`."""
        return (step * self.world_size + self.rank) * self.batch_size

    def __iter__(self):
        worker, workers = worker_shard()
        for step in itertools.count(self.start_step + worker, workers):
            sources, indices = self.mixture.locate(self.first_sample(step), self.batch_size)
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


class TokenDataModule(LightningDataModule):
    """Batches of (x, y) token windows from one or several prepared sources, mixed by weight."""

    def __init__(
        self,
        sources: dict[str, str] | str,
        weights: dict[str, float] | None = None,
        schedule: Schedule | None = None,
        seq_len: int = 1024,
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 0,
        val_batches: int = 16,
        verify_checksums: bool = True,
    ):
        """
        Args:
            sources: Prepared directory (one source), or name -> prepared directory for a mixture.
            weights: Name -> weight in tokens (normalised to sum 1); None weighs all sources equally.
            schedule: Move the weights linearly to schedule.weights between schedule.start_tokens and end_tokens.
            seq_len: Tokens per training sequence (each window holds seq_len + 1).
            batch_size: Sequences per micro-batch per device.
            num_workers: DataLoader worker processes for training batches (validation reads in the main process).
            seed: Seed of the window order and of the mixture sequence.
            val_batches: Batches per source in each validation (at most the whole val split).
            verify_checksums: Checksum every shard at setup (sizes are always checked).
        """
        super().__init__()
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise UserError(f"data.{name} must be at least 1, got {value}")
        if num_workers < 0 or val_batches < 0:
            raise UserError("data.num_workers and data.val_batches must be ≥ 0")
        self.dirs = {Path(sources).name: sources} if isinstance(sources, str) else dict(sources)
        if not self.dirs:
            raise UserError("data.sources is empty")
        self.source_names = list(self.dirs)
        self.vocab_size = max(read_manifest(d)["tokenizer"]["vocab_size"] for d in self.dirs.values())
        self.weights, self.schedule, self.seed = weights, schedule, seed
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.val_batches, self.verify_checksums = val_batches, verify_checksums
        self.consumed_samples = 0  # global samples training has received (all ranks)
        self.train_windows: list[PackedWindows] | None = None
        self.val_windows: list[PackedWindows] | None = None
        self.mixture: Mixture | None = None
        self.train_batches: TrainBatches | None = None

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Stop with one line if any source holds ids the model cannot embed."""
        for directory in self.dirs.values():
            check_vocab(directory, read_manifest(directory)["tokenizer"]["vocab_size"], model_vocab_size)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_windows is None:
            self.train_windows = [self._open(d, "train") for d in self.dirs.values()]
            sizes = {name: len(w) for name, w in zip(self.source_names, self.train_windows)}
            self.mixture = Mixture(sizes, self.weights, self.seed, self.seq_len, self.schedule)
        if stage in ("fit", "validate", None) and self.val_windows is None:
            self.val_windows = [self._open(d, "val") for d in self.dirs.values()]

    def _open(self, directory: str, split: str) -> PackedWindows:
        return PackedWindows(directory, split, self.seq_len, self.verify_checksums)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._rank_world()
        per_step = self.batch_size * world
        if self.consumed_samples % per_step:
            rank_zero_warn(f"resumed at sample {self.consumed_samples}, not a multiple of batch_size x world_size")
        start = -(-self.consumed_samples // per_step)
        self.train_batches = TrainBatches(self.train_windows, self.mixture, self.batch_size, start, rank, world)
        return self._loader(self.train_batches, self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        self.setup("validate")
        rank, world = self._rank_world()
        # val reads a few batches straight from the page cache: no worker processes to start per source
        return [
            self._loader(ValBatches(w, self.batch_size, self.val_batches, rank, world), 0) for w in self.val_windows
        ]

    def _loader(self, dataset: IterableDataset, workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # datasets yield whole batches
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self.consumed_samples += self.batch_size * trainer.world_size
            # a new pass over the loader (next epoch, when limit_train_batches ends one) continues from here
            self.train_batches.start_step = self.consumed_samples // (self.batch_size * trainer.world_size)
        return batch

    def mixture_stats(self) -> dict[str, float]:
        """`data/<source>/tokens` (input tokens consumed, all ranks) and `data/<source>/weight` (current weight)."""
        self.setup("fit")
        counts = self.mixture.counts(self.consumed_samples)
        weights = self.mixture.weights(np.array([self.consumed_samples]))[0]
        stats = {}
        for name, count, weight in zip(self.source_names, counts, weights):
            stats[f"data/{name}/tokens"] = float(count * self.seq_len)
            stats[f"data/{name}/weight"] = float(weight)
        return stats

    def state_dict(self) -> dict:
        state = {"consumed_samples": self.consumed_samples, "seed": self.seed, "seq_len": self.seq_len}
        if self.mixture is not None:  # informational: all of it follows from consumed_samples
            counts = self.mixture.counts(self.consumed_samples)
            state["sources"] = {
                name: {"samples": int(c), "epoch": int(c // size)}
                for name, c, size in zip(self.source_names, counts, self.mixture.sizes)
            }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if (state_dict.get("seed"), state_dict.get("seq_len")) != (self.seed, self.seq_len):
            rank_zero_warn("resuming data with a different seed or seq_len: the stream continues but differs")
        self.consumed_samples = int(state_dict["consumed_samples"])


class MixtureLogger(Callback):
    """Logs the datamodule's `mixture_stats()` every `trainer.log_every_n_steps` optimizer steps (host-side only)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, TokenDataModule) and trainer.global_step % trainer.log_every_n_steps == 0:
            pl_module.log_dict(datamodule.mixture_stats(), on_step=True, on_epoch=False)
