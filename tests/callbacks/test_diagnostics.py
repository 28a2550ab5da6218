"""Per-group gradient norm, update norm and update/weight ratio against the same numbers computed by hand."""

import lightning as L
import pytest
import torch

from lm.callbacks.diagnostics import TrainingDiagnostics
from lm.data.datamodule import TokenDataModule
from lm.module import LanguageModel
from lm.optim import OptimConfig
from tests.conftest import quiet_trainer, tiny_config


class ByHand(L.Callback):
    """Each group's gradients and weights before the optimizer step, and its weights after it (runs before the
    diagnostics callback, so it sees the same gradients)."""

    def __init__(self):
        self.before: dict[str, tuple[list, list]] = {}
        self.after: dict[str, list] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.groups = {g["name"]: g["params"] for g in optimizer.param_groups}
        self.before = {
            name: ([p.grad.clone() for p in params], [p.detach().clone() for p in params])
            for name, params in self.groups.items()
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after = {n: [p.detach().clone() for p in ps] for n, ps in self.groups.items()}


def norm(tensors) -> float:
    return torch.cat([t.flatten() for t in tensors]).norm().item()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_group_norms_and_update_ratios_at_logging_steps(text_corpus, tmp_path, optimizer):
    model = LanguageModel(config=tiny_config(n_layer=1), optim=OptimConfig(name=optimizer, lr=1e-2, warmup_steps=1))
    data = TokenDataModule(text_corpus, seq_len=32, batch_size=2, num_workers=0, val_batches=1)
    by_hand, diagnostics = ByHand(), TrainingDiagnostics(enabled=True)
    trainer = quiet_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, log_every_n_steps=2, gradient_clip_val=0.1,
        callbacks=[by_hand, diagnostics],
    )  # fmt: skip
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    groups = {"decay", "no_decay"} | ({"muon"} if optimizer == "muon" else set())
    assert {key.split("/")[1] for key in metrics if key.startswith("diag/")} == groups
    for name in groups:  # step 4, a logging step; the gradient norm is before clipping
        grads, weights = by_hand.before[name]
        update = norm([a - b for a, b in zip(by_hand.after[name], weights)])
        assert metrics[f"diag/{name}/grad_norm"].item() == pytest.approx(norm(grads), rel=1e-5)
        assert metrics[f"diag/{name}/update_norm"].item() == pytest.approx(update, rel=1e-4)
        ratio = update / norm(by_hand.after[name])
        assert metrics[f"diag/{name}/update_ratio"].item() == pytest.approx(ratio, rel=1e-4)
        assert update > 0
    assert not diagnostics.before  # nothing held between logging steps
