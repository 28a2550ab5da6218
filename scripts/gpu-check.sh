#!/usr/bin/env bash
# `python -m lm gpu-check` on the GPU machine that the device tool lends (docs/performance.md, "GPU check"). Its
# python has torch but not jsonargparse or datasets, and no network: ../shared/device/fetch-wheels.sh puts their
# wheels in .whl/ and the GPT-2 BPE in .tiktoken/, which travel with the checkout (carry: [".whl", ".tiktoken"]).
# Results and the full log go to $OUT (runs/gpu-check elsewhere); arguments go to `lm gpu-check` (e.g. --only cases).
set -uo pipefail
out=${OUT:-runs/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
  exit
export PYTHONPATH=$PWD:/tmp/site TIKTOKEN_CACHE_DIR=$PWD/.tiktoken PYTHONUNBUFFERED=1
python3 -m lm gpu-check --out "$out" "$@" 2>&1 | tee "$out/log"
