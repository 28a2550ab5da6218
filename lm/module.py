"""LanguageModel: the LightningModule that trains a GPT on next-token prediction.

Design choices:
- The Trainer owns precision, accumulation, clipping, devices and checkpointing; this module owns the
  model, the loss and the training step. It asks lm.optim for the optimizer `model.optim` names (parameter groups,
  AdamW, Muon and its variants) and for the LR schedule.
- The budget may be given in steps, tokens, tokens per parameter (20 = Chinchilla) or FLOPs; lm.run_length turns it
  into steps of micro-batch × seq_len × accumulation × world size tokens (under `batch_schedule`, of its phases),
  in `setup`, before any compute.
- Validation loss, perplexity and bits per byte are token-weighted sums reduced by torchmetrics, so they
  are exact under DDP (not a mean of per-rank means).
- `init_from` starts from another checkpoint's weights (continued pretraining): architecture from the base,
  fresh optimizer, schedule and counters. Resuming an interrupted run is the Trainer's `--ckpt_path`.
"""

import io
import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lm.checkpoint import base_config_and_weights, lineage_of, load_weights
from lm.data.tokenizer import token_byte_lengths
from lm.errors import UserError
from lm.model import GPT, ModelConfig
from lm.model.gpt import LOSS_CHUNK_TOKENS
from lm.optim import OptimConfig, build_optimizer, check_warmup, lr_at
from lm.optim.config import migrate_hparams
from lm.run_length import RunLength

MUON_UNDER_FSDP = (
    "model.optim.name: muon cannot run under FSDP, where each rank holds a shard of every weight matrix and Muon "
    "orthogonalizes whole matrices: use DDP (configs/trainer/ddp.yaml) or model.optim.name: adamw"
)


class NextTokenLoss(torchmetrics.Metric):
    """Sums of loss (nats), target tokens and their UTF-8 bytes; `compute` gives loss, ppl and bpb."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("loss_sum", "tokens", "bytes"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss_sum: torch.Tensor, tokens: torch.Tensor | int, num_bytes: torch.Tensor):
        self.loss_sum += loss_sum.double()
        self.tokens += tokens
        self.bytes += num_bytes.double()

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.loss_sum / self.tokens
        return {"loss": loss, "ppl": loss.exp(), "bpb": self.loss_sum / (math.log(2) * self.bytes)}


class LanguageModel(L.LightningModule):
    def __init__(
        self,
        config: ModelConfig | None = None,
        optim: OptimConfig | None = None,
        batch_tokens: int | None = None,
        batch_schedule: list[tuple[float, int]] | None = None,
        max_tokens: float | None = None,
        tokens_per_param: float | None = None,
        max_flops: float | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
        loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
        z_loss: float = 0.0,
        init_from: str | None = None,
    ):
        """
        Args:
            config: Model architecture. Leave unset with `init_from`: the base checkpoint supplies it.
            optim: The optimizer (adamw | muon, its settings) and the learning-rate schedule: lm/optim/config.py.
            batch_tokens: Global batch in tokens per optimizer step (e.g. 524288). Gradient accumulation follows from
                it, the micro-batch, seq_len and the world size, so changing the GPU count keeps the optimisation.
            batch_schedule: A batch that grows during training: (tokens seen, batch tokens) points, e.g.
                [[1e8, 262144], [3e8, 524288]]; the run starts with batch_tokens (or the trainer's accumulation), and
                each point's batch takes over at the first step at or after its tokens that is a multiple of the new
                batch (lm/batch_schedule.py). The learning-rate schedule, an integer val_check_interval and
                warmup_steps then count steps of the first batch, i.e. tokens: validation every val_check_interval ×
                first batch tokens. None: one batch throughout.
            max_tokens: Training budget in tokens; sets trainer.max_steps. Exclusive with `tokens_per_param`.
            tokens_per_param: Training budget as a multiple of the parameter count (20 ≈ Chinchilla-optimal).
            max_flops: Training budget in FLOPs by the model's own count (GPT.flops_per_token at data.seq_len, which
                counts matmuls and attention, not the embedding lookups): tokens = max_flops / flops per token. The
                budget of a scaling ladder (experiments/scaling-demo); run_summary.json records the FLOPs spent.
            compile: torch.compile the model's training forward pass (the model itself is left as it is, so checkpoint
                names do not change). Validation, samples and evaluation run eagerly: they would otherwise compile
                graphs of their own (eval mode, no grad, every KV-cache position) for a few batches now and then.
            activation_checkpointing: Recompute each block's activations in the backward pass instead of keeping
                them: much less memory (larger micro-batches on small GPUs) for about a third more compute.
            loss_chunk_tokens: Tokens per pass through the output layer when computing the loss (lm/model/loss.py):
                the (tokens × vocabulary) logits are never all held at once. 0 computes them for the whole micro-batch.
            z_loss: Coefficient of PaLM's z-loss, `z_loss · mean(log Z²)` added to the training loss (log Z: the
                log-sum-exp of a token's logits), which keeps the softmax normalizer near 1; 1e-4 in PaLM and OLMo.
                Logged as train/z_loss; train/loss and validation stay the cross-entropy. 0: off.
            init_from: Start from the weights of this lm checkpoint or Hugging Face model directory (continued
                pretraining); optimizer, schedule and counters start fresh. To resume a run, use --ckpt_path.
        """
        super().__init__()
        if isinstance(optim, dict):  # rebuilt from a checkpoint's hyper-parameters
            optim = OptimConfig.from_dict(optim)
        optim = optim or OptimConfig()
        optim.check()
        if z_loss < 0:
            raise UserError(f"model.z_loss must be ≥ 0, got {z_loss}")
        if sum(budget is not None for budget in (max_tokens, tokens_per_param, max_flops)) > 1:
            raise UserError("set only one of model.max_tokens, model.tokens_per_param and model.max_flops")
        if isinstance(config, dict):  # rebuilt from a checkpoint's hyper-parameters
            config = ModelConfig(**config)
        lineage = None
        if init_from is not None:
            config, state, base = base_config_and_weights(init_from, config)
            lineage = lineage_of(init_from, base)
        elif config is None:
            raise UserError(
                "no model architecture: set model.config (e.g. --config configs/model/...yaml) or model.init_from"
            )
        self.save_hyperparameters()
        self.hparams.config = asdict(config)  # plain dicts: checkpoints load with weights_only=True
        self.hparams.optim = asdict(optim)
        self.hparams.init_from = None  # the checkpoint rebuilds without the base file; lineage says where it began
        self.lineage = lineage
        self.config = config
        self.optim = optim
        self.model = GPT(config)
        self.model.activation_checkpointing = activation_checkpointing
        self.model.loss_chunk_tokens = loss_chunk_tokens
        if init_from is not None:
            load_weights(self.model, state, init_from)
        self.register_buffer("token_bytes", torch.from_numpy(token_byte_lengths()), persistent=False)
        self.val_metrics = torch.nn.ModuleDict()
        self.run_length: RunLength | None = None  # steps and tokens per step of a fit, resolved in setup()
        self.checkpoint_step: int | None = None  # global step of the checkpoint these weights were restored from
        self.compiled_forward = None  # the training forward under torch.compile (setup, with `compile`)
        self.window_loss: tuple[int, torch.Tensor | None, int] = (-1, None, 0)  # (step, loss sum, micro-batches)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's, also for a checkpoint written before model.optim existed: its flat optimizer hyper-parameters
        (lr, optimizer, muon_lr, ...) are moved into `optim` first (lm.optim.config.migrate_hparams)."""
        if isinstance(checkpoint_path, (str, Path)) and Path(checkpoint_path).is_file():
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
            hparams = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
            if migrate_hparams(hparams) is not hparams:
                checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY] = migrate_hparams(hparams)
                checkpoint_path = io.BytesIO()
                torch.save(checkpoint, checkpoint_path)
                checkpoint_path.seek(0)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # ---- setup ---------------------------------------------------------------------------------------

    def setup(self, stage: str):
        data = self.trainer.datamodule
        if data is not None:
            self.check_data(data)
            names = getattr(data, "source_names", ["data"])
            self.val_metrics = torch.nn.ModuleDict({name: NextTokenLoss() for name in ["all", *names]})
        if stage == "fit" and self.optim.name == "muon" and isinstance(self.trainer.strategy, FSDPStrategy):
            raise UserError(MUON_UNDER_FSDP)
        if stage == "fit":
            self.run_length = RunLength.resolve(
                self.trainer, data, self.hparams.batch_tokens, self.hparams.batch_schedule
            )
            steps = self.run_length.set_max_steps(self.trainer, self.budget_tokens())
            check_warmup(self.optim, self.lr_clock(steps))
            tokens = self.tokens_seen(steps)
            rank_zero_info(
                f"training {steps:,} steps × {self.run_length.tokens_per_step:,} tokens/step (accumulation "
                f"{self.trainer.accumulate_grad_batches}, world size {self.trainer.world_size}"
                f"{', first batch of the schedule' if self.run_length.scheduled else ''}) = "
                f"{tokens:,.0f} tokens, {tokens * self.flops_per_token():.3g} FLOPs; "
                f"model {self.model.num_params():,} parameters "
                f"({self.model.num_params(non_embedding=True):,} outside the embeddings and output layer)"
            )
        # A function, not a module: assigned to self it adds no second copy of the parameters to the state dict.
        # Static shapes: each row length of data.seq_len_warmup compiles once (a few graphs), where dynamo's default
        # would turn to one dynamic-shape graph, for the whole run, at the first new length.
        self.compiled_forward = torch.compile(self.model.forward, dynamic=False) if self.hparams.compile else None

    def check_data(self, data):
        """One-line errors for data the model cannot take; lm.train calls it before the run directory is touched."""
        if data.seq_len > self.config.block_size:
            raise UserError(
                f"data.seq_len ({data.seq_len}) is larger than the model's context "
                f"(model.config.block_size = {self.config.block_size})"
            )
        if hasattr(data, "check_model_vocab"):  # TokenDataModule: names the manifest whose tokenizer does not fit
            data.check_model_vocab(self.config.vocab_size)

    def budget_tokens(self) -> float | None:
        """The training budget in tokens, from whichever of model.max_tokens, tokens_per_param and max_flops is set."""
        if self.hparams.tokens_per_param is not None:
            return self.hparams.tokens_per_param * self.model.num_params()
        if self.hparams.max_flops is not None:
            return self.hparams.max_flops / self.flops_per_token()
        return self.hparams.max_tokens

    def tokens_seen(self, step: int) -> int:
        """Tokens trained on in the first `step` optimizer steps (all ranks, all micro-batches); 0 outside fit."""
        return self.run_length.tokens_seen(step) if self.run_length else 0

    def on_train_batch_start(self, batch, batch_idx):
        """Under a batch schedule, the accumulation of the optimizer step this micro-batch belongs to (constant
        within a step: global_step moves only when it ends)."""
        if self.run_length.scheduled:
            self.trainer.accumulate_grad_batches = self.run_length.accumulation(self.global_step)

    def flops_per_token(self) -> int:
        """Training FLOPs per token of this run: the model's count at the data's sequence length."""
        return self.model.flops_per_token(getattr(self.trainer.datamodule, "seq_len", None))

    def full_model(self, strategy) -> GPT:
        """The whole GPT, for evaluation callbacks: the model itself, or under FSDP (where each rank holds a
        shard of every weight) a copy holding the gathered weights. Under FSDP this is a collective: every rank
        must call it."""
        if not isinstance(strategy, FSDPStrategy):
            return self.model
        state = get_model_state_dict(strategy.model, options=StateDictOptions(full_state_dict=True))
        with torch.device(self.device):
            model = GPT(self.config)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        return model.train(self.model.training)

    # ---- steps ---------------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, z_loss = (self.compiled_forward or self.model)(x, y, z_loss=self.hparams.z_loss)
        if self.logging_step():  # train/loss is the cross-entropy: the loss less its z-loss term
            self.log_step_metrics(self.window_mean(loss.detach() - z_loss), z_loss)
        return loss

    def window_mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The mean loss of this optimizer step's micro-batches so far: at its last micro-batch, the step's loss.

        Summed on the device (no host sync), only in the windows of logging steps; each micro-batch logs the mean so
        far and the logger writes the last one.
        """
        step, total, count = self.window_loss
        if step != self.global_step:  # the first micro-batch of this step's window
            total, count = torch.zeros_like(loss, dtype=torch.float32), 0
        self.window_loss = (self.global_step, total + loss.detach(), count + 1)
        return self.window_loss[1] / self.window_loss[2]

    def logging_step(self) -> bool:
        """Whether the optimizer step being made is one the logger writes (one in trainer.log_every_n_steps)."""
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0

    def log_step_metrics(self, loss: torch.Tensor, z_loss: torch.Tensor) -> None:
        """train/loss (the cross-entropy), train/z_loss (with model.z_loss), train/tokens, the learning rates and
        TensorBoard's x-axis, at the steps the logger writes.

        Only there: Lightning's self.log costs ~0.3 ms of host time a call (as much as a small model's whole step),
        and what is logged at another step is never written. Not prog_bar=True: Lightning would read progress-bar
        metrics back from the device after every batch (lm's progress bar reads train/loss at these steps). Numbers
        are made on the device: self.log would copy a Python number there, a host sync on CUDA.
        """
        step = self.global_step + 1
        on_device = lambda value: torch.full((), float(value), device=loss.device)
        # "step" is TensorBoard's x-axis (Lightning's logger takes a logged "step"): optimizer steps done once this one
        # is, as in metrics.jsonl and checkpoint names (Lightning's own x would be this step's 0-based index).
        metrics = {"step": step, "train/tokens": self.tokens_seen(step), **self.learning_rates()}
        if self.hparams.z_loss:
            self.log("train/z_loss", z_loss)
        self.log("train/loss", loss)
        self.log_dict({name: on_device(value) for name, value in metrics.items()})

    def learning_rates(self) -> dict[str, float]:
        """The rate each schedule gives this step, once: `lr` for model.optim.lr's, which every AdamW parameter group
        follows, and `lr/muon` for Muon's (Lightning's LearningRateMonitor would log every group: `lr/pg1`, ...)."""
        groups = self.optimizers().param_groups
        return {"lr": groups[0]["lr"]} | {f"lr/{g['name']}": g["lr"] for g in groups if g.get("name") == "muon"}

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.update_val_metrics(self.val_metrics, self.model, batch, dataloader_idx)

    def update_val_metrics(self, metrics: torch.nn.ModuleDict, model: GPT, batch, dataloader_idx: int) -> None:
        """Adds `model`'s loss on a validation batch to `metrics` (val_metrics, or the weight average's copy)."""
        x, y = batch
        loss = model(x, y)
        update = (loss * y.numel(), y.numel(), self.token_bytes[y].sum())
        metrics["all"].update(*update)
        if len(metrics) > 2:  # several sources: also per source
            metrics[self.trainer.datamodule.source_names[dataloader_idx]].update(*update)

    def on_validation_epoch_end(self):
        self.log_val_metrics(self.val_metrics, "val")
        # TensorBoard's x-axis, as for training: optimizer steps done. validate and test log in a TensorBoard run of
        # their own, at the step of the checkpoint they evaluate, so their point sits beside the fit's curve.
        fit = self.trainer.state.fn == "fit"
        self.log("step", float(self.global_step if fit else self.checkpoint_step or 0))

    def log_val_metrics(self, metrics: torch.nn.ModuleDict, prefix: str) -> None:
        """Logs `<prefix>/loss`, ppl and bpb (and `<prefix>/<source>/...` for several sources), then resets."""
        for name, metric in metrics.items():
            # Decided by config, not by `update_called`: compute() is a collective sum, so every rank takes part,
            # even one whose share of the val batches was empty (else the others wait for it forever).
            if name == "all" or len(metrics) > 2:
                source = prefix if name == "all" else f"{prefix}/{name}"
                for key, value in metric.compute().items():
                    self.log(f"{source}/{key}", value.float(), add_dataloader_idx=False)
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict):
        checkpoint["tokens_seen"] = self.tokens_seen(self.global_step)
        if self.run_length:  # a fit's (a checkpoint saved outside one, e.g. for export, has no batch to keep)
            checkpoint.update(self.run_length.checkpoint_state())
        checkpoint["lineage"] = self.lineage

    def on_load_checkpoint(self, checkpoint: dict):
        self.lineage = checkpoint.get("lineage", self.lineage)
        self.checkpoint_step = checkpoint.get("global_step")
        if self.run_length:  # resuming a fit
            self.run_length.check_resume(checkpoint, self.trainer.world_size)

    # ---- optimizer and schedule ----------------------------------------------------------------------

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by norm with the norm NonFiniteGuard computed this step (`optimizer.grad_norm`): one gradient norm a
        step instead of two, and under FSDP the whole model's (Lightning's own path is used otherwise)."""
        norm = getattr(optimizer, "grad_norm", None)
        if norm is None or not gradient_clip_val or gradient_clip_algorithm == "value":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grads_with_norm_(parameters, gradient_clip_val, norm)

    def configure_optimizers(self):
        # 16-mixed has a GradScaler, which must unscale the gradients before clipping: fused AdamW would do that only
        # inside its step. The scaler then skips non-finite steps itself.
        optimizer = self.build_optimizer(fused=not str(self.trainer.precision).startswith("16"))
        lr = self.optim.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_at(step) / lr if lr else 0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def build_optimizer(self, fused: bool = True) -> torch.optim.Optimizer:
        """The optimizer `model.optim` names over this model (lm.optim.build); `lm bench` builds its plain loop's
        optimizer with it too."""
        return build_optimizer(self.model, self.optim, fused)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based) in this run (lm.optim.schedule), counted by `lr_clock`."""
        end = self.trainer.max_steps
        return lr_at(self.optim, self.lr_clock(step), self.lr_clock(end), last=self.lr_clock(end - 1))

    def lr_clock(self, step: int) -> int:
        """The learning-rate schedule's count of the first `step` optimizer steps (RunLength.lr_clock)."""
        return self.run_length.lr_clock(step) if self.run_length else step
