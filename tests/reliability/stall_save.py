"""`python stall_save.py ARGS` = `python -m lm ARGS`, except that checkpoint write number $STALL_SAVE stops halfway.

Half of that checkpoint's bytes reach its temporary file, "STALLED <path>" is printed, and the process sleeps,
so a test can SIGKILL it in the middle of a checkpoint write.
"""

import io
import os
import sys
import time

import torch

from lm.cli import main

stall_at = int(os.environ["STALL_SAVE"])
saves = 0
real_save = torch.save


def stalling_save(obj, f, *args, **kwargs):
    global saves
    saves += 1
    if saves != stall_at:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print(f"STALLED {f.name}", flush=True)
    time.sleep(600)


torch.save = stalling_save
main(sys.argv[1:])
