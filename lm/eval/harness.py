"""lm's GPT as an lm-evaluation-harness model ("lm"), and the one function that runs a list of harness tasks.

Importing this module registers the model, so `lm_eval.simple_evaluate(model="lm", model_args="ckpt_path=C")`
works. It needs lm-evaluation-harness (`pip install -e ".[eval]"`); lm.eval.suite imports it only when used.

Design choices:
- The harness's own TemplateLM turns (context, continuation) strings into tokens, so the context/continuation
  split (trailing spaces move to the continuation; an empty context becomes <|endoftext|>) is the harness's,
  exactly as for its `hf` model. Tokens are tiktoken's GPT-2 BPE, the one every lm checkpoint was trained on.
- Scoring follows the `hf` model: requests sorted by length (longest first), batches right-padded (causal
  attention: padding on the right never changes a scored position), the sequence cut from the left to the
  context, log-softmax in float32. `loglikelihood_rolling` uses the harness's own rolling windows.
- `generate_until` decodes with GPT.generate (KV cache). GPT has no padding mask, so a generation batch holds
  contexts of the same length (after sorting, neighbours often are); contexts are cut from the left to leave room
  for `max_gen_toks`. A row stops at <|endoftext|> or once its text holds a stop sequence, and its text is cut at
  the first stop sequence, as the harness does for every model.
- Data parallel: the harness sees one process. With `shard=(rank, world_size)` each rank scores every
  world_size-th request of the sorted list (padded so all ranks run the same batches) and the scores are
  all-gathered, so every rank returns all the results and computes the same metrics, exactly.
"""

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import lm_eval.models  # noqa: F401  (the harness's models: its registry loads them only if it is empty)
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lm_eval import simple_evaluate, utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from lm.checkpoint import Weights, load_model
from lm.data.tokenizer import EOT, get_encoding
from lm.errors import UserError
from lm.model import GPT

SAMPLING_KWARGS = {"do_sample", "temperature", "top_k", "top_p"}


@register_model("lm")
class HarnessModel(TemplateLM):
    """An lm checkpoint (or Hugging Face directory lm imports), or a live GPT, for lm-evaluation-harness."""

    def __init__(
        self,
        ckpt_path: str | None = None,
        model: GPT | None = None,
        batch_size: int | str = 16,
        device: str | None = None,
        dtype: str = "float32",
        max_gen_toks: int = 256,
        shard: tuple[int, int] = (0, 1),
        progress: bool = True,
        max_batch_size: int | None = None,
        weights: Weights = "raw",
    ):
        """
        Args:
            ckpt_path: An lm checkpoint (.ckpt) or a Hugging Face model directory (ignored when `model` is given).
            model: A GPT already in memory (the training callback passes the live model; it is not copied).
            batch_size: Sequences per forward pass.
            device: Where a loaded checkpoint runs (default: cuda if available, else cpu).
            dtype: float32, or bfloat16 / float16 to run under autocast (scores are log-softmaxed in float32).
            max_gen_toks: Tokens generated at most when a task does not say.
            shard: (rank, world size): this process scores every world_size-th request, then all ranks gather.
            progress: Show progress bars (on rank 0).
            max_batch_size: Accepted for the harness's CLI; unused (no automatic batch size).
            weights: raw: the trained weights; ema: their moving average (a checkpoint of a run with ema.start_step).
        """
        super().__init__()
        if str(batch_size).startswith("auto"):
            raise UserError("batch_size 'auto' is not supported by the lm model; give a number")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.checkpoint = {}  # where the weights come from, for the results' config
        if model is None:
            if ckpt_path is None:
                raise UserError("the lm model needs ckpt_path=<checkpoint or Hugging Face directory>")
            model, ckpt = load_model(ckpt_path, weights)
            model.to(pick_device(device))
            self.checkpoint = {key: ckpt.get(key) for key in ("global_step", "tokens_seen")}
            self.checkpoint |= {"ckpt_path": ckpt_path, "weights": weights}
        self.gpt = model
        self.batch_size = int(batch_size)
        self.dtype = getattr(torch, dtype)
        self._max_gen_toks = int(max_gen_toks)
        self.shard_rank, self.shard_count = shard
        self.quiet = not progress or self.shard_rank > 0
        self.enc = get_encoding()

    # ---- what the harness asks of a model ----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return EOT

    @property
    def max_length(self) -> int:
        return self.gpt.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """GPT-2 BPE; "<|endoftext|>" in the text is the special token, as with the harness's GPT-2 tokenizer."""
        return self.enc.encode(string, allowed_special="all")

    def tok_decode(self, tokens: list[int]) -> str:
        return self.enc.decode(tokens, errors="replace")

    def get_model_info(self) -> dict:
        return {
            **self.checkpoint,
            "model_num_parameters": self.gpt.num_params(),
            "model_config": vars(self.gpt.config),
            "model_dtype": str(self.dtype),
        }

    # ---- scoring ---------------------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm or self.quiet)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-likelihood of the continuation, whether greedy decoding would produce it) for each request."""
        pairs = [(context, continuation) for _, context, continuation in requests]
        whole = [context + continuation for context, continuation in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-len(whole[i]), whole[i]))
        mine = self.my_share(order)
        batches = range(0, len(mine), self.batch_size)
        scores = []
        for start in tqdm(batches, desc="loglikelihood", unit="batch", disable=disable_tqdm or self.quiet):
            scores += self.score([pairs[i] for i in mine[start : start + self.batch_size]])
        return self.gather(order, scores)

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One right-padded forward pass over (context, continuation) token pairs."""
        rows = []
        for context, continuation in pairs:
            if len(continuation) > self.max_length:
                raise UserError(f"a continuation of {len(continuation)} tokens exceeds the context ({self.max_length})")
            rows.append((context + continuation)[-(self.max_length + 1) :][:-1])  # inputs; the last token is a target
        inputs = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            inputs[i, : len(row)] = torch.tensor(row)
        with self.inference():
            logits = self.gpt(inputs.to(self.device))  # (B, T, vocab)
        results = []
        for i, (row, (_, continuation)) in enumerate(zip(rows, pairs)):
            # The positions that predict the continuation (log-softmax of those only: (B, T, vocab) in fp32 is big).
            scored = F.log_softmax(logits[i, len(row) - len(continuation) : len(row)].float(), dim=-1)
            targets = torch.tensor(continuation, device=scored.device)
            greedy = bool((scored.argmax(dim=-1) == targets).all())
            results.append((float(scored.gather(1, targets[:, None]).sum()), greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, in the harness's disjoint windows of the model's context."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for window in utils.get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            ):
                windows.append((None, *utils.make_disjoint_window(window)))
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ------------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if the task asks) continuations, cut at the first stop sequence."""
        jobs = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            until = handle_stop_sequences(kwargs.pop("until"), eos=self.tok_decode([EOT]))
            max_gen_toks = kwargs.pop("max_gen_toks")
            unknown = set(kwargs) - SAMPLING_KWARGS
            if unknown:
                raise UserError(f"generation settings {sorted(unknown)} are not supported by the lm model")
            if max_gen_toks >= self.max_length:
                raise UserError(f"max_gen_toks ({max_gen_toks}) must be below the model's context ({self.max_length})")
            tokens = (self.tok_encode(context) or [EOT])[-(self.max_length - max_gen_toks) :]
            sampling = (kwargs.get("temperature", 0.0) if kwargs.get("do_sample") else 0.0, kwargs.get("top_k"))
            jobs.append((tokens, until, max_gen_toks, (*sampling, kwargs.get("top_p"))))
        # Batches: same settings, same context length; longest first, like the harness's hf model.
        key = lambda i: (repr(jobs[i][1:]), -len(jobs[i][0]), jobs[i][0])
        order = sorted(range(len(jobs)), key=key)
        mine = self.my_share(order)
        texts = []
        progress = tqdm(total=len(mine), desc="generate_until", disable=disable_tqdm or self.quiet)
        start = 0
        while start < len(mine):
            first = jobs[mine[start]]
            end = start + 1
            while end < len(mine) and end - start < self.batch_size and same_batch(jobs[mine[end]], first):
                end += 1
            texts += self.generate([jobs[i][0] for i in mine[start:end]], *first[1:])
            progress.update(end - start)
            start = end
        progress.close()
        results = self.gather(order, texts)
        for req, text in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results

    @torch.no_grad()
    def generate(self, contexts: list[list[int]], until: list[str], max_gen_toks: int, sampling) -> list[str]:
        """Continue contexts of equal length together (KV cache) until each stops; texts cut at the stop sequence."""
        temperature, top_k, top_p = sampling
        generated = [[] for _ in contexts]
        done = [False] * len(contexts)
        idx = torch.tensor(contexts, device=self.device)
        with self.inference():
            for step in self.gpt.generate(idx, max_gen_toks, temperature, top_k, top_p):
                for row, token in enumerate(step.tolist()):
                    if done[row]:
                        continue
                    if token == EOT:
                        done[row] = True
                        continue
                    generated[row].append(token)
                    done[row] = any(stop in self.tok_decode(generated[row]) for stop in until)
                if all(done):
                    break
        return [postprocess_generated_text(self.tok_decode(tokens), until, None) for tokens in generated]

    # ---- helpers ---------------------------------------------------------------------------------------

    @contextmanager
    def inference(self):
        """Eval mode (put back as it was afterwards), autocast when dtype is not float32, and no torch.compile: a
        compiled training model would recompile for every new batch shape and KV-cache position."""
        was_training = self.gpt.training
        self.gpt.eval()
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        try:
            with autocast, torch.compiler.set_stance("force_eager"):
                yield
        finally:
            self.gpt.train(was_training)

    def my_share(self, order: list[int]) -> list[int]:
        """This rank's requests: every world_size-th of the sorted list, padded with its last one so that every rank
        has the same number (the same batches and collectives)."""
        share = order[self.shard_rank :: self.shard_count]
        size = -(-len(order) // self.shard_count)
        return share + share[-1:] * (size - len(share)) if share else order[:1] * size

    def gather(self, order: list[int], results: list) -> list:
        """Every rank's results, back in the order of the requests."""
        if self.shard_count == 1:
            shares = [results]
        else:
            shares = [None] * self.shard_count
            dist.all_gather_object(shares, results)
        out = [None] * len(order)
        for rank, share in enumerate(shares):
            for i, result in zip(order[rank :: self.shard_count], share):
                out[i] = result
        return out


def pick_device(device: str | None) -> str:
    """The device asked for; without CUDA, a CUDA device (the harness CLI's default is cuda:0) becomes the CPU."""
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            logging.getLogger(__name__).warning("%s asked for but CUDA is not available: running on the CPU", device)
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def same_batch(job, first) -> bool:
    """Generation jobs batch together when they share their length and generation settings."""
    return len(job[0]) == len(first[0]) and job[1:] == first[1:]


# ---- running tasks ---------------------------------------------------------------------------------------


def task_manager(tasks: list[str], include_path: str | None = None) -> TaskManager:
    """The harness's task index; only `include_path` is indexed when it defines every task (seconds faster)."""
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise UserError(f"--include_path {include_path} is not a directory of task YAML files")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in local.all_tasks or Path(task).is_file() for task in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks and not Path(task).is_file()]
    if unknown:
        raise UserError(
            f"unknown harness tasks {unknown} (`python -m lm.eval ls tasks` lists them; --include_path adds yours)"
        )
    return manager


def run_tasks(
    lm: HarnessModel,
    tasks: list[str],
    manager: TaskManager,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 100000,
) -> dict | None:
    """The harness's results dict for these tasks (None on ranks other than local rank 0, as the harness does)."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    return simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
    )


def results_table(results: dict) -> str:
    """The harness's markdown table of the tasks (and of the groups, if any)."""
    if results.get("groups"):
        return utils.make_table(results) + "\n" + utils.make_table(results, "groups")
    return utils.make_table(results)


def results_json(results: dict) -> str:
    return json.dumps(results, indent=2, default=utils.handle_non_serializable, ensure_ascii=False) + "\n"
