from pathlib import Path

import pytest

from tests.interop.tiny_hf import HF_MODELS


@pytest.fixture(params=list(HF_MODELS))
def hf_dir(request, tmp_path: Path):
    """A tiny random Hugging Face model and the directory it was saved to."""
    model = HF_MODELS[request.param]()
    model.save_pretrained(tmp_path / request.param)
    return model, tmp_path / request.param
