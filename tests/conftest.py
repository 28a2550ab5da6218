import os
from pathlib import Path

import pytest
import torch

from lm.model import ModelConfig

# The GPT-2 BPE cannot be downloaded on CI or most compute nodes; use the shared cache when it is there.
_SHARED_CACHE = Path(__file__).resolve().parents[2] / "shared" / "tokenizer" / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED_CACHE.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED_CACHE)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_config(block: str = "modern", **overrides) -> ModelConfig:
    return ModelConfig(**{"block": block, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, **overrides})


@pytest.fixture(params=["classic", "modern"])
def block(request) -> str:
    return request.param
