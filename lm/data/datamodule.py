"""TokenDataModule: prepared sources -> weighted, resumable (x, y) batches for Lightning.

Order of the stream. Global sample k is `Mixture.locate(k)`. A loader started when c samples had been consumed
gives rank r of W, at its local micro-batch t, global samples c + [(t * W + r) * B, (t * W + r + 1) * B): ranks
read disjoint windows, and together they read exactly what one process with the same B would, in the same order.
DataLoader worker w of N builds local batches t = w, w + N, ...; the DataLoader returns them in order.

Resume. `state_dict()` stores the global samples consumed by training, counted in `on_after_batch_transfer`
(main process, once per batch training actually received), not what workers have prefetched, and the mixture it
was drawn from (sources, their sizes, weights, schedule). Per-source positions and epochs follow from the count
and are stored alongside. A resumed run continues the same stream from exactly that sample, with or without
gradient accumulation, on any number of ranks (no rounding to a multiple of B x W). A mixture that differs from
the checkpoint's is refused with one line naming the change, unless `allow_mixture_change` is set: then each source
continues from the samples it had served (their counts become the new mixture's base, lm.data.mixture).

Epochs. A source whose windows have all been served starts its next pass over them, in a new order; rank 0 warns
once per source when that first happens and `data/<source>/epoch` (passes so far, fractional) is logged.

Packing. `packing: stream` (the default) serves windows cut from the stream of documents (lm.data.packed);
`bos_aligned` serves rows that each start at a document start, documents packed by best fit and cropped
(lm.data.packing). Both are numbered sample sources for the mixture, so order, ranks, workers, resume and schedule
work the same; the share of tokens the rows use and crop is logged once and written to run_summary.json.

Sequence-length warm-up. With `seq_len_warmup`, training micro-batches are cut into shorter rows while few tokens
have been seen: each (batch_size, seq_len) window pair becomes (batch_size · seq_len / L, L) consecutive pieces, on
the device, after the transfer (a view, no copy). The stream, the samples consumed and the tokens of a micro-batch
stay exactly those of a run without warm-up, so the data position, resume, token budget and batch schedule are
untouched; the row length is a function of the samples consumed, so a resumed run cuts as the uninterrupted one did.

Validation. One loader per source (`source_names` order), the first `val_batches` batches of windows of its
val split in file order: the same windows at every validation, whatever the packing, so runs with different
packing are scored on the same tokens.
"""

import math
import multiprocessing
import signal
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from lm.data.batches import TrainBatches, ValBatches
from lm.data.mixture import Mixture, Schedule
from lm.data.packed import PackedWindows, check_vocab, read_manifest
from lm.data.packing import AlignedRows
from lm.errors import UserError


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
        allow_mixture_change: bool = False,
        multiprocessing_context: str | None = None,
        packing: Literal["stream", "bos_aligned"] = "stream",
        max_doc_tokens: int | None = None,
        seq_len_warmup: list[tuple[int, float]] | None = None,
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
            verify_checksums: Verify shard checksums at setup, once per directory per machine (a stamp in the
                directory records what was verified; sizes are always checked).
            allow_mixture_change: Resume from a checkpoint made with other sources, weights or schedule: each source
                continues from the samples it had served. Without it such a resume is refused.
            multiprocessing_context: Start method of the training DataLoader's worker processes (fork, spawn,
                forkserver); None: the platform's default.
            packing: Training samples: "stream" windows of the concatenated documents, or "bos_aligned" rows that
                each start at a document start (best-fit packing; documents longer than a row are cropped).
                Validation reads stream windows either way.
            max_doc_tokens: With bos_aligned, crop documents to this many tokens (their leading <|endoftext|>
                included) even where a row could hold more; None: seq_len + 1.
            seq_len_warmup: Short training sequences first: (length, tokens) pairs, e.g. [[256, 1e8], [512, 2e8]]:
                rows of 256 tokens until 1e8 tokens (all ranks) have been trained on, then 512 until 2e8, then seq_len.
                Lengths increase and divide seq_len; a micro-batch keeps its batch_size × seq_len tokens (more, shorter
                rows), cut from the same windows. Validation keeps seq_len. None: seq_len throughout.
        """
        super().__init__()
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise UserError(f"data.{name} must be at least 1, got {value}")
        if num_workers < 0 or val_batches < 0:
            raise UserError("data.num_workers and data.val_batches must be ≥ 0")
        methods = multiprocessing.get_all_start_methods()
        if multiprocessing_context not in (None, *methods):
            raise UserError(
                f"data.multiprocessing_context must be one of {', '.join(methods)}, not {multiprocessing_context!r}"
            )
        if packing not in ("stream", "bos_aligned"):
            raise UserError(f"data.packing must be stream or bos_aligned, not {packing!r}")
        if max_doc_tokens is not None and (packing != "bos_aligned" or max_doc_tokens < 2):
            raise UserError(
                f"data.max_doc_tokens = {max_doc_tokens} needs data.packing: bos_aligned and at least 2 tokens "
                "(a document's <|endoftext|> and one more)"
            )
        self.dirs = {Path(sources).name: sources} if isinstance(sources, str) else dict(sources)
        if not self.dirs:
            raise UserError("data.sources is empty")
        self.source_names = list(self.dirs)
        self.vocab_size = max(read_manifest(d)["tokenizer"]["vocab_size"] for d in self.dirs.values())
        self.weights, self.schedule, self.seed = weights, schedule, seed
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.val_batches, self.verify_checksums = val_batches, verify_checksums
        self.allow_mixture_change, self.multiprocessing_context = allow_mixture_change, multiprocessing_context
        self.packing, self.max_doc_tokens = packing, max_doc_tokens
        self.seq_len_warmup = [(int(length), tokens) for length, tokens in seq_len_warmup or ()]
        lengths, ends = [length for length, _ in self.seq_len_warmup], [tokens for _, tokens in self.seq_len_warmup]
        if any(seq_len % length or length >= seq_len for length in lengths) or lengths != sorted(set(lengths)):
            raise UserError(
                f"data.seq_len_warmup lengths {lengths} must increase and each divide data.seq_len ({seq_len}) "
                "(one window is cut into whole rows)"
            )
        if ends != sorted(set(ends)) or any(tokens <= 0 for tokens in ends):
            raise UserError(f"data.seq_len_warmup token counts {ends} must be positive and increase")
        self.consumed_samples = 0  # global samples training has received (all ranks)
        self.repeated: set[str] = set()  # sources already warned about as being repeated
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
            self.train_windows = [self._open_train(d) for d in self.dirs.values()]
            self.mixture = self._mixture()
        if stage in ("fit", "validate", None) and self.val_windows is None:
            self.val_windows = [self._open(d, "val") for d in self.dirs.values()]

    def _mixture(self, base: tuple[int, dict[str, int]] = (0, {})) -> Mixture:
        sizes = {name: len(w) for name, w in zip(self.source_names, self.train_windows)}
        return Mixture(sizes, self.weights, self.seed, self.seq_len, self.schedule, base)

    def _open(self, directory: str, split: str) -> PackedWindows:
        return PackedWindows(directory, split, self.seq_len, self.verify_checksums)

    def _open_train(self, directory: str) -> PackedWindows:
        if self.packing == "stream":
            return self._open(directory, "train")
        return AlignedRows(directory, "train", self.seq_len, self.verify_checksums, self.max_doc_tokens)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._rank_world()
        self.train_batches = TrainBatches(
            self.train_windows, self.mixture, self.batch_size, self.consumed_samples, rank, world
        )
        return self._loader(self.train_batches, self.num_workers, self.multiprocessing_context)

    def val_dataloader(self) -> list[DataLoader]:
        self.setup("validate")
        rank, world = self._rank_world()
        # val reads a few batches straight from the page cache: no worker processes to start per source
        return [
            self._loader(ValBatches(w, self.batch_size, self.val_batches, rank, world), 0) for w in self.val_windows
        ]

    def _loader(self, dataset: IterableDataset, workers: int, context: str | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # datasets yield whole batches
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers > 0 else None,
            multiprocessing_context=context if workers > 0 else None,
            worker_init_fn=ignore_ctrl_c if workers > 0 else None,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is not None and trainer.training:
            length = self.row_length(self.consumed_samples)
            self.consumed_samples += self.batch_size * trainer.world_size
            # a new pass over the loader (next epoch, when limit_train_batches ends one) continues from here
            self.train_batches.start = self.consumed_samples
            if length != self.seq_len:
                batch = tuple(tokens.view(-1, length) for tokens in batch)
        return batch

    def row_length(self, consumed_samples: int) -> int:
        """Training row length once `consumed_samples` global samples have been trained on (seq_len_warmup)."""
        tokens = consumed_samples * self.seq_len
        return next((length for length, end in self.seq_len_warmup if tokens < end), self.seq_len)

    def mixture_stats(self) -> dict[str, float]:
        """`data/<source>/tokens` (input tokens consumed, all ranks), `/weight` (current) and `/epoch` (passes so far).

        Warns (rank 0, once per source) when a source has been served whole and is being repeated.
        """
        self.setup("fit")
        counts = self.mixture.counts(self.consumed_samples)
        weights = self.mixture.weights(np.array([self.consumed_samples]))[0]
        stats = {}
        for name, count, size, weight in zip(self.source_names, counts, self.mixture.sizes, weights):
            stats[f"data/{name}/tokens"] = float(count * self.seq_len)
            stats[f"data/{name}/weight"] = float(weight)
            stats[f"data/{name}/epoch"] = float(count / size)
            if count > size and name not in self.repeated:
                self.repeated.add(name)
                rank_zero_warn(
                    f"data source '{name}' ran out: all {size:,} of its windows ({size * self.seq_len:,} tokens) "
                    f"have been served and it is being repeated, pass {count // size + 1} now "
                    f"({count * self.seq_len:,} tokens served); add data or lower its weight if that is not intended"
                )
        return stats

    def packing_stats(self) -> dict[str, float]:
        """With bos_aligned packing, the share of the training tokens (all sources) that rows hold
        (`data/packing/used_fraction`), that was cropped off documents (`cropped_fraction`) and that was left over at
        the ends of packing blocks (`left_over_fraction`); empty for stream windows and before setup("fit")."""
        if self.packing == "stream" or self.train_windows is None:
            return {}
        stats = [rows.stats() for rows in self.train_windows]
        tokens = sum(source["tokens"] for source in stats)
        return {
            f"data/packing/{key}_fraction": sum(source[key] for source in stats) / tokens
            for key in ("used", "cropped", "left_over")
        }

    def mixture_config(self) -> dict:
        """What decides the stream besides seed and seq_len: sources in order, their sizes, weights, schedule
        (and the packing, when not stream windows)."""
        self.setup("fit")
        names, mixture = self.source_names, self.mixture
        schedule = None
        if self.schedule is not None:
            schedule = {
                "weights": dict(zip(names, mixture.end.tolist())),
                "start_tokens": float(self.schedule.start_tokens),
                "end_tokens": float(self.schedule.end_tokens),
            }
        config = {
            "sources": list(names),
            "windows": dict(zip(names, mixture.sizes.tolist())),
            "weights": dict(zip(names, mixture.start.tolist())),
            "schedule": schedule,
        }
        if self.packing != "stream":  # stream checkpoints stay as they were
            config["packing"] = {"packing": self.packing, "max_doc_tokens": self.max_doc_tokens}
        return config

    def state_dict(self) -> dict:
        state = {"consumed_samples": self.consumed_samples, "seed": self.seed, "seq_len": self.seq_len}
        if self.mixture is not None:
            base_samples, base_counts = self.mixture.base
            state["mixture"] = {
                **self.mixture_config(),
                "base_samples": base_samples,
                "base_counts": dict(zip(self.source_names, base_counts.tolist())),
            }
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
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        saved = state_dict.get("mixture")
        if saved is None or not fitting:  # a checkpoint older than mixture records, or validate/test
            return
        if not self.check_resume(state_dict):
            self.mixture = self._mixture((saved["base_samples"], saved["base_counts"]))
            return
        served = {name: info["samples"] for name, info in state_dict["sources"].items()}
        self.mixture = self._mixture((self.consumed_samples, served))

    def check_resume(self, state_dict: dict | None) -> list[str]:
        """How this data's mixture differs from the one a checkpoint's `state_dict()` was drawn from.

        Refused (one line) unless `allow_mixture_change`; lm.train asks before the Trainer writes anything.
        """
        saved = (state_dict or {}).get("mixture")
        changes = mixture_changes(saved, self.mixture_config()) if saved else []
        if changes and not self.allow_mixture_change:
            raise UserError(
                f"the data mixture differs from the checkpoint's ({'; '.join(changes)}): resuming would redraw "
                "every source's position as if the new mixture had always applied; restore it, or set "
                "data.allow_mixture_change: true to continue each source from where it was"
            )
        if changes:
            rank_zero_warn(f"data mixture changed on resume ({'; '.join(changes)}); each source continues where it was")
        return changes


def mixture_changes(before: dict, now: dict) -> list[str]:
    """Human-readable differences between two `TokenDataModule.mixture_config()`s (empty: the same mixture)."""
    if before["sources"] != now["sources"]:
        added = [name for name in now["sources"] if name not in before["sources"]]
        removed = [name for name in before["sources"] if name not in now["sources"]]
        parts = [f"added {added}"] * bool(added) + [f"removed {removed}"] * bool(removed)
        return ["data.sources " + (", ".join(parts) or f"reordered {before['sources']} -> {now['sources']}")]
    if before.get("packing") != now.get("packing"):
        return [f"data.packing {describe_packing(before)} -> {describe_packing(now)}"]
    changes = [
        f"source '{name}' has {now['windows'][name]:,} windows, the checkpoint's had {before['windows'][name]:,} "
        "(prepared again, or another seq_len)"
        for name in now["sources"]
        if before["windows"][name] != now["windows"][name]
    ]
    if not same_weights(before["weights"], now["weights"]):
        changes.append(f"data.weights {rounded(before['weights'])} -> {rounded(now['weights'])}")
    old, new = before["schedule"], now["schedule"]
    if (old is None) != (new is None) or (
        old is not None
        and (
            not same_weights(old["weights"], new["weights"])
            or (old["start_tokens"], old["end_tokens"]) != (new["start_tokens"], new["end_tokens"])
        )
    ):
        changes.append(f"data.schedule {describe(old)} -> {describe(new)}")
    return changes


def describe_packing(config: dict) -> str:
    packing = config.get("packing") or {"packing": "stream", "max_doc_tokens": None}
    cap = packing["max_doc_tokens"]
    return packing["packing"] + (f" (max_doc_tokens {cap})" if cap else "")


def describe(schedule: dict | None) -> str:
    if schedule is None:
        return "none"
    return f"{rounded(schedule['weights'])} from {schedule['start_tokens']:g} to {schedule['end_tokens']:g} tokens"


def same_weights(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)


def rounded(weights: dict[str, float]) -> dict[str, float]:
    return {name: round(weight, 4) for name, weight in weights.items()}


def ignore_ctrl_c(worker_id: int) -> None:
    """A worker ignores SIGINT: a terminal's Ctrl-C reaches every process of the job, and the main process decides
    what it does (lm.callbacks.preemption: finish the step and save). A worker that died of it would leave the main
    process waiting for its batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class MixtureLogger(Callback):
    """Logs the datamodule's `mixture_stats()` every `trainer.log_every_n_steps` optimizer steps (host-side only),
    and its `packing_stats()` once, when training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        if isinstance(trainer.datamodule, TokenDataModule):
            stats = trainer.datamodule.packing_stats()
            for logger in trainer.loggers if stats else ():
                logger.log_metrics(stats, step=trainer.global_step)  # rank 0 only (rank_zero_only in the loggers)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % trainer.log_every_n_steps == 0 and isinstance(trainer.datamodule, TokenDataModule):
            pl_module.log_dict(trainer.datamodule.mixture_stats(), on_step=True, on_epoch=False)
