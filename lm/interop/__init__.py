"""Hugging Face interop: export lm checkpoints as GPT-2 / Llama directories and import those back."""
