"""Data parallelism at the datamodule level: ranks read disjoint windows that, interleaved, are one process's stream."""

from types import SimpleNamespace

import torch

from lm.data.datamodule import TokenDataModule


def micro_batches(data_dir: str, rank: int, world_size: int, steps: int, consumed: int = 0) -> list[torch.Tensor]:
    data = TokenDataModule(data_dir, seq_len=32, batch_size=2, num_workers=0)
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    data.consumed_samples = consumed
    batches = iter(data.train_dataloader())
    return [next(batches)[0] for _ in range(steps)]


def test_ranks_read_disjoint_windows_in_the_single_process_order(text_corpus):
    single = micro_batches(text_corpus, rank=0, world_size=1, steps=8)
    ranks = [micro_batches(text_corpus, rank=r, world_size=2, steps=4) for r in range(2)]
    interleaved = [ranks[step % 2][step // 2] for step in range(8)]
    for ours, theirs in zip(interleaved, single):
        assert torch.equal(ours, theirs)
    rows = {tuple(row.tolist()) for rank in ranks for batch in rank for row in batch}
    assert len(rows) == 2 * 4 * 2  # no window read twice


def test_resume_on_another_world_size_continues_the_stream(text_corpus):
    """consumed_samples is global: a checkpoint from 2 ranks resumes on 1 (or 4) at the same sample."""
    single = micro_batches(text_corpus, rank=0, world_size=1, steps=8)
    resumed = micro_batches(text_corpus, rank=0, world_size=1, steps=4, consumed=8)  # after 2 steps on 2 ranks × 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, single[4:]))
