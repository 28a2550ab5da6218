"""Text samples from fixed prompts during training: the quickest sanity check of a run."""

import lightning as L

from lm.generate import generate_text
from lm.model.gpt import check_sampling


class SampleCallback(L.Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training), continues each prompt and writes
    the text to TensorBoard (Text tab, tag samples/<i>). Samples on rank 0, with its own seeded random stream
    so it never changes the training run; keeps the latest samples for the run summary. Under FSDP every rank
    first helps gather the whole model (`LanguageModel.full_model`).
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        every_n_steps: int = 500,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 0,
    ):
        """
        Args:
            prompts: Texts to continue (default: one, "The").
            every_n_steps: Optimizer steps between two rounds of samples.
            max_new_tokens: Tokens generated per prompt (fewer if <|endoftext|> comes first).
            temperature: Sampling temperature; 0 is greedy.
            top_k: Sample among the k most likely tokens (0 or null: all).
            seed: Seed of the sampling stream, the same at every round so samples are comparable over time.
        """
        check_sampling(temperature, top_k, None)
        self.prompts = prompts or ["The"]
        self.every_n_steps = every_n_steps
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
        self.samples: list[dict] = []  # [{"step", "prompt", "text"}] of the latest round (rank 0)
        self.sampled_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps == 0:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.sample(trainer, pl_module)

    def sample(self, trainer, pl_module):
        step = trainer.global_step
        if step == 0 or step == self.sampled_step:
            return
        self.sampled_step = step
        model = pl_module.full_model(trainer.strategy)  # on every rank: under FSDP it gathers the weights
        if not trainer.is_global_zero:
            return
        self.samples = [
            {"step": step, "prompt": prompt, "text": generate_text(model, prompt, **self.sampling)}
            for prompt in self.prompts
        ]
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_text"):
                for i, sample in enumerate(self.samples):
                    logger.experiment.add_text(f"samples/{i}", sample["prompt"] + sample["text"], step)
