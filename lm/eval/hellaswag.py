"""HellaSwag (commonsense sentence completion), scored completion-style like the GPT-3 paper and llm.c.

Design choices:
- Each example has a context and 4 endings. The model reads context + " " + ending, and each ending is
  scored by the loss of its own tokens only. `acc` picks the ending with the lowest summed loss, `acc_norm`
  the lowest mean loss per token (which does not penalise long endings).
- The 4 endings of a batch of examples run as one right-padded batch; a mask keeps only ending tokens.
  Causal attention means padding on the right never changes the scored positions.
- A context + ending longer than the model's context loses context tokens from the left.
- Reads the official jsonl (https://github.com/rowanz/hellaswag, hellaswag_val.jsonl); only ctx, endings
  and label are used.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse import CLI
from tqdm import tqdm

from lm.checkpoint import Weights, load_model
from lm.data.tokenizer import get_encoding
from lm.errors import UserError
from lm.model import GPT


@dataclass
class Example:
    context: list[int]
    endings: list[list[int]]  # 4 endings, each tokenized with its leading space
    label: int


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Tokenized examples of a HellaSwag jsonl file; a malformed line is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"HellaSwag data not found: {path} (download hellaswag_val.jsonl from "
            "https://github.com/rowanz/hellaswag/tree/master/data)"
        )
    enc = get_encoding()
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ctx, endings, label = row["ctx"], row["endings"], int(row["label"])
                well_formed = isinstance(ctx, str) and isinstance(endings, list) and len(endings) == 4
                if not (well_formed and all(isinstance(e, str) for e in endings) and 0 <= label < 4):
                    raise ValueError("needs a string 'ctx', 4 string 'endings' and a 'label' in 0..3")
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{path}, line {line_number}: not a HellaSwag example ({err})") from None
            examples.append(Example(enc.encode_ordinary(ctx), [enc.encode_ordinary(" " + e) for e in endings], label))
    return examples


@torch.no_grad()
def ending_losses(model: GPT, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean loss of each ending's tokens given its context: two (len(examples), 4) tensors."""
    max_len = model.config.block_size + 1  # inputs and targets are this sequence shifted by one
    rows, starts = [], []
    for example in examples:
        for ending in example.endings:
            tokens = (example.context + ending)[-max_len:]
            rows.append(tokens)
            starts.append(max(len(tokens) - len(ending), 1))  # index of the first ending token
    width = max(len(r) for r in rows) - 1
    device = model.lm_head.weight.device
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width)
    for i, (tokens, start) in enumerate(zip(rows, starts)):
        n = len(tokens) - 1
        inputs[i, :n] = torch.tensor(tokens[:-1])
        targets[i, :n] = torch.tensor(tokens[1:])
        mask[i, start - 1 : n] = 1.0  # the target at position t is token t + 1
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    logits = model(inputs)  # (rows, width, vocab)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(mask)
    sums = (losses * mask).sum(dim=1)
    means = sums / mask.sum(dim=1)
    return sums.view(-1, 4), means.view(-1, 4)


def correct_counts(model: GPT, examples: list[Example], batch_size: int, progress: bool = False) -> torch.Tensor:
    """[correct by summed loss, correct by mean loss, examples] as a float tensor on the model's device."""
    counts = torch.zeros(3, device=model.lm_head.weight.device)
    batches = range(0, len(examples), batch_size)
    for i in tqdm(batches, desc="hellaswag", unit="batch", disable=not progress):
        batch = examples[i : i + batch_size]
        sums, means = ending_losses(model, batch)
        labels = torch.tensor([e.label for e in batch], device=counts.device)
        counts += torch.stack(
            [
                (sums.argmin(1) == labels).sum(),
                (means.argmin(1) == labels).sum(),
                torch.tensor(len(batch), device=counts.device),
            ]
        )
    return counts


def evaluate(model: GPT, examples: list[Example], batch_size: int = 8, progress: bool = False) -> dict:
    """{"acc", "acc_norm", "n"} of the model on these examples."""
    correct, correct_norm, n = correct_counts(model, examples, batch_size, progress).tolist()
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": int(n)}


class HellaSwagCallback(L.Callback):
    """Logs eval/hellaswag_acc and eval/hellaswag_acc_norm on the first `limit` examples during training.

    It runs at the end of a validation, at most once every `every_n_steps` optimizer steps, so the scores
    land next to val/loss (in TensorBoard, metrics.jsonl and for ModelCheckpoint's `monitor`). Every rank
    scores an equal share of the examples and the counts are summed, so it is exact under DDP and FSDP.
    """

    def __init__(self, data: str, every_n_steps: int | None = None, limit: int = 500, batch_size: int = 8):
        """
        Args:
            data: HellaSwag jsonl in the official schema.
            every_n_steps: Minimum optimizer steps between two evaluations (null: at every validation).
            limit: Number of examples (the first ones of the file).
            batch_size: Examples per forward pass.
        """
        self.data, self.every_n_steps, self.limit, self.batch_size = data, every_n_steps, limit, batch_size
        self.examples: list[Example] = []
        self.last_step: int | None = None

    def setup(self, trainer, pl_module, stage):
        self.examples = load_examples(self.data, self.limit)
        self.examples = self.examples[: len(self.examples) - len(self.examples) % trainer.world_size]
        if not self.examples:
            raise UserError(f"{self.data}: fewer HellaSwag examples than ranks ({trainer.world_size})")

    def on_validation_epoch_end(self, trainer, pl_module):
        step = trainer.global_step
        due = self.last_step is None or self.every_n_steps is None or step - self.last_step >= self.every_n_steps
        if trainer.sanity_checking or not due:
            return
        self.last_step = step
        share = self.examples[trainer.global_rank :: trainer.world_size]
        model = pl_module.full_model(trainer.strategy)  # under FSDP: the gathered weights (a collective)
        counts = trainer.strategy.reduce(correct_counts(model, share, self.batch_size), reduce_op="sum")
        correct, correct_norm, n = counts
        pl_module.log("eval/hellaswag_acc", correct / n)
        pl_module.log("eval/hellaswag_acc_norm", correct_norm / n)


def hellaswag(
    ckpt_path: str, data: str, limit: int | None = None, batch_size: int = 8, weights: Weights = "raw"
) -> dict:
    """Accuracy on HellaSwag: which of 4 endings the model finds most likely.

    Args:
        ckpt_path: An lm checkpoint (.ckpt) or a Hugging Face model directory.
        data: HellaSwag jsonl in the official schema (e.g. hellaswag_val.jsonl, 10,042 examples).
        limit: Evaluate only the first N examples.
        batch_size: Examples per forward pass (each adds 4 sequences).
        weights: raw: the trained weights; ema: their moving average (a checkpoint of a run with ema.start_step).
    """
    examples = load_examples(data, limit)
    if not examples:
        raise UserError(f"{data} holds no examples")
    model, _ = load_model(ckpt_path, weights)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate(model, examples, batch_size, progress=True)
    print(json.dumps(result))
    return result


def main(argv: list[str]) -> dict:
    return CLI(hellaswag, args=argv, as_positional=False, prog="python -m lm hellaswag")
