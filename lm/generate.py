"""`python -m lm generate`: stream text from a checkpoint (or a Hugging Face directory) to stdout.

Design choices:
- Text is printed as tokens arrive. A GPT-2 token may hold part of a multi-byte UTF-8 character, so the
  token bytes go through an incremental UTF-8 decoder that holds back an incomplete character until
  its remaining bytes arrive.
- An empty prompt starts from <|endoftext|>, the document boundary the model saw in training.
- A prompt longer than the context keeps its last `block_size` tokens (with a warning on stderr).
- `--bench` measures tokens/s with and without the KV cache instead of printing text.
"""

import codecs
import sys
import time
from collections.abc import Iterator

import torch
from jsonargparse import ArgumentParser

from lm.checkpoint import Weights, load_model
from lm.data.tokenizer import EOT, get_encoding
from lm.model import GPT
from lm.model.gpt import check_sampling


def encode_prompt(prompt: str, block_size: int) -> list[int]:
    """Prompt token ids, cut from the left to fit the context; <|endoftext|> alone for an empty prompt."""
    ids = get_encoding().encode(prompt, allowed_special="all") or [EOT]
    if len(ids) > block_size:
        print(
            f"warning: the prompt has {len(ids)} tokens, more than the context of {block_size}; "
            f"keeping the last {block_size}",
            file=sys.stderr,
        )
        ids = ids[-block_size:]
    return ids


def stream_text(
    model: GPT,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yields the generated text piece by piece (never a broken UTF-8 character)."""
    enc = get_encoding()
    device = next(model.parameters()).device
    idx = torch.tensor([encode_prompt(prompt, model.config.block_size)], device=device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in model.generate(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator):
        token = token.item()
        if token == EOT and stop_at_eos:
            break
        if text := decoder.decode(enc.decode_single_token_bytes(token)):
            yield text
    if text := decoder.decode(b"", final=True):
        yield text


def seeded_generator(model: GPT, seed: int) -> torch.Generator:
    """A private random stream on the model's device: sampling never disturbs the global RNG (training's)."""
    return torch.Generator(next(model.parameters()).device).manual_seed(seed)


def generate_text(model: GPT, prompt: str, max_new_tokens: int, seed: int | None = None, **sampling) -> str:
    """The whole completion as one string, with the model's train/eval mode left as it was."""
    generator = None if seed is None else seeded_generator(model, seed)
    was_training = model.training
    model.eval()
    try:
        return "".join(stream_text(model, prompt, max_new_tokens, generator=generator, **sampling))
    finally:
        model.train(was_training)


def benchmark(model: GPT, prompt: str, max_new_tokens: int) -> dict[str, float]:
    """Greedy decoding speed in tokens/s, with and without the KV cache."""
    device = next(model.parameters()).device
    idx = torch.tensor([encode_prompt(prompt, model.config.block_size)], device=device)
    speeds = {}
    for use_cache in (True, False):
        for _ in model.generate(idx, 2, temperature=0, use_cache=use_cache):  # warm-up
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = list(model.generate(idx, max_new_tokens, temperature=0, use_cache=use_cache))
        tokens[-1].item()  # waits for the device
        speeds["cached" if use_cache else "uncached"] = max_new_tokens / (time.perf_counter() - start)
    return speeds


def run(
    ckpt_path: str,
    prompt: str = "",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int | None = None,
    no_cache: bool = False,
    ignore_eos: bool = False,
    bench: bool = False,
    weights: Weights = "raw",
) -> None:
    """Generate text from a trained model, printed as it is produced.

    Args:
        ckpt_path: An lm checkpoint (.ckpt) or a Hugging Face model directory.
        prompt: Text to continue; empty starts a new document.
        max_new_tokens: Number of tokens to generate at most.
        temperature: Sampling temperature; 0 picks the most likely token (greedy).
        top_k: Sample only among the k most likely tokens (0 or null: all).
        top_p: Sample only among the fewest most likely tokens whose probabilities reach p (nucleus; null: off).
        seed: Random seed, for reproducible samples.
        weights: raw: the trained weights; ema: their moving average (a checkpoint of a run with ema.start_step).
    """
    check_sampling(temperature, top_k, top_p)
    model, _ = load_model(ckpt_path, weights)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    if bench:
        speeds = benchmark(model, prompt, max_new_tokens)
        print(
            f"{max_new_tokens} tokens, {model.num_params():,} parameters, {next(model.parameters()).device}: "
            f"{speeds['cached']:.1f} tokens/s with the KV cache, {speeds['uncached']:.1f} without"
        )
        return
    generator = None if seed is None else seeded_generator(model, seed)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for piece in stream_text(
        model,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        use_cache=not no_cache,
        stop_at_eos=not ignore_eos,
        generator=generator,
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m lm generate", description=run.__doc__.splitlines()[0])
    parser.add_function_arguments(run, as_positional=False, skip={"no_cache", "ignore_eos", "bench"})
    flags = {
        "no_cache": "Recompute the whole context at every step instead of using the KV cache (slower; for checks).",
        "ignore_eos": "Keep generating past <|endoftext|>.",
        "bench": "Print tokens/s with and without the KV cache (greedy, max_new_tokens tokens) instead of text.",
    }
    for name, help in flags.items():
        parser.add_argument(f"--{name}", type=bool, nargs="?", const=True, default=False, help=help)
    run(**parser.parse_args(argv).as_dict())
