from lm.model.config import ModelConfig
from lm.model.gpt import GPT

__all__ = ["GPT", "ModelConfig"]
