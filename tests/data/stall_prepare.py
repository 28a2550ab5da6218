"""`python stall_prepare.py ARGS` = `python -m lm prepare ARGS`, except that shard write number $STALL_AT stalls.

That write reaches the shard file (past the last progress.json), then "STALLED" is printed and the process sleeps,
so a test can kill -9 it in the middle of a prepare, with more written than recorded.
"""

import os
import sys
import time

from lm.cli import main
from lm.data.prepare import ShardWriter

stall_at = int(os.environ["STALL_AT"])
writes = 0
real_add = ShardWriter.add


def stalling_add(self, *args):
    global writes
    real_add(self, *args)
    writes += 1
    if writes == stall_at:
        self.file.flush()
        print("STALLED", flush=True)
        time.sleep(600)


ShardWriter.add = stalling_add
main(["prepare", *sys.argv[1:]])
