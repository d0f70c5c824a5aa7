#!/usr/bin/env bash
# On a lent GPU machine (torch and triton preinstalled, no network), from the repo root:
#   bash perf/run_gpu.sh tests   GPU test run, `tritonloss check`, `tritonloss tune`
#   bash perf/run_gpu.sh perf    the perf suites -> perf/results/<gpu-slug>/
# Logs and results are also copied to $OUT when it is set.
set -uo pipefail
out=${OUT:-/tmp/tritonloss-gpu}; mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { cat "$out/install.log"; exit 1; }
slug=$(python3 -c "import torch; from tritonloss.kernels._tuning import gpu_slug; print(gpu_slug(torch.cuda.get_device_name()))")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
case "${1:-tests}" in
  tests)
    TRITONLOSS_AUTOTUNE=0 python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -25
    tritonloss check 2>&1 | tee "$out/check.log"
    tritonloss tune 2>&1 | tee "$out/tune.log" | tail -3
    cp kernels/tuned/"$slug".json "$out/" ;;
  perf)
    mkdir -p perf/results/"$slug"
    for suite in perf/test_*_perf.py; do
      family=$(basename "$suite" _perf.py); family=${family#test_}
      python3 -m pytest "$suite" -q -p no:cacheprovider --benchmark-json=perf/results/"$slug"/"$family".json \
        --benchmark-columns=min,median,rounds 2>&1 | tee -a "$out/perf.log" | tail -40
      cp perf/results/"$slug"/"$family".json "$out/"
    done ;;
esac
