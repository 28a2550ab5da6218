"""`python -m lm export`: an lm checkpoint → a Hugging Face directory that transformers loads with no lm code.

classic checkpoints become GPT2LMHeadModel, modern ones LlamaForCausalLM (see lm/interop/hf.py for the mapping).
The model is rebuilt and loaded strictly first, so a checkpoint that does not fit its own config fails here,
not in transformers.
"""

import argparse

from lm.checkpoint import load_model
from lm.interop.hf import ARCHITECTURES, hf_model_type, save_hf_dir


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="lm checkpoint (.ckpt) or Hugging Face model directory")
    parser.add_argument("--out", required=True, help="directory to create; must not exist or be empty")
    parser.add_argument(
        "--weights",
        choices=["raw", "ema"],
        default="raw",
        help="the trained weights (raw) or their moving average (ema; a run with ema.start_step)",
    )
    args = parser.parse_args(argv)
    model, _ = load_model(args.ckpt_path, args.weights)
    out = save_hf_dir(model.config, model.state_dict(), args.out, source=args.ckpt_path)
    print(
        f"wrote {ARCHITECTURES[hf_model_type(model.config)]} to {out}; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
