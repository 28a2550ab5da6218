"""Data parallelism at the datamodule level: ranks read disjoint windows that, interleaved, are one process's stream."""

from types import SimpleNamespace

import pytest
import torch

from lm.data.datamodule import TokenDataModule
from lm.errors import UserError
from lm.module import LanguageModel
from tests.conftest import tiny_config


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


def attached(world_size: int, accumulate: int = 1) -> LanguageModel:
    module = LanguageModel(tiny_config(), batch_tokens=256)
    module._trainer = SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate)
    return module


def test_accumulation_follows_the_world_size():
    data = SimpleNamespace(batch_size=2, seq_len=32)
    for world_size, accumulate in ((1, 4), (2, 2), (4, 1)):
        module = attached(world_size)
        module._resolve_accumulation(data)
        assert module.trainer.accumulate_grad_batches == accumulate


def test_global_batch_not_divisible_by_the_world_size_is_refused():
    with pytest.raises(UserError, match=r"batch_tokens \(256\) is not a multiple .* world size \(2 × 32 × 3 = 192\)"):
        attached(world_size=3)._resolve_accumulation(SimpleNamespace(batch_size=2, seq_len=32))


def test_resume_with_another_global_batch_is_refused():
    module = attached(world_size=2)
    module.tokens_per_step = 128
    with pytest.raises(UserError, match=r"256 tokens per optimizer step.*model.batch_tokens=256"):
        module.on_load_checkpoint({"tokens_per_step": 256})
    module.on_load_checkpoint({"tokens_per_step": 128})  # same global batch: fine on any world size
