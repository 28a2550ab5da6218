"""The GPT-2 BPE (tiktoken), loaded offline-friendly.

tiktoken downloads the BPE files on first use and caches them under $TIKTOKEN_CACHE_DIR. On machines
without internet that download fails with a connection traceback; we turn it into one line that says
what to set.
"""

import functools

import numpy as np
import tiktoken

from lm.errors import UserError

TOKENIZER_NAME = "gpt2"
EOT = 50256  # <|endoftext|>, the document separator in every shard


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(TOKENIZER_NAME)
    except Exception as err:  # tiktoken raises requests/urllib errors of several kinds when offline
        raise UserError(
            f"could not load tiktoken's '{TOKENIZER_NAME}' BPE ({type(err).__name__}). On a machine "
            "without internet, set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached GPT-2 files "
            "(e.g. export TIKTOKEN_CACHE_DIR=../shared/tokenizer/tiktoken_cache)."
        ) from None


@functools.cache
def token_byte_lengths() -> np.ndarray:
    """UTF-8 bytes each token id stands for; <|endoftext|> counts 0 (it is not part of any text)."""
    enc = get_encoding()
    lengths = np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)], dtype=np.int64)
    lengths[EOT] = 0
    return lengths
