"""Evaluations beyond validation loss: lm-evaluation-harness tasks (suite, harness) and lm's own HellaSwag scorer
(bits per byte is part of validation, in lm.module)."""
