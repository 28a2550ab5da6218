"""Evaluations beyond validation loss: HellaSwag (bits per byte is part of validation, in lm.module)."""
