"""`python -m lm.eval ...`: the harness's own command line (`lm-eval`, every flag), with lm's model registered as "lm".

python -m lm.eval run --model lm --model_args ckpt_path=runs/x/checkpoints/best.ckpt --tasks hellaswag
"""

import sys

from lm.errors import UserError
from lm.eval.suite import import_harness

try:
    import_harness()
except UserError as err:
    sys.exit(f"error: {err}")

from lm_eval.__main__ import cli_evaluate  # noqa: E402  (only once the harness is known to be installed)

cli_evaluate()
