#!/usr/bin/env bash
# The whole benchmark suite in one run, into benchmarks/results/<device>-<date>/: every model,
# float32 and the half-precision autocast the device trains in (float16 and bfloat16 on a GPU,
# bfloat16 on the CPU), each in NCHW and channels_last. Usage: benchmarks/run_suite.sh [extra args]
# MODELS and HALF_MODELS (space-separated) narrow the float32 and the half-precision runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# committed results must name the commit that produced them
if [ -n "$(git status --porcelain --untracked-files=no)" ] && [ "${ALLOW_DIRTY:-0}" != 1 ]; then
  echo "run_suite.sh: the tree has uncommitted changes; commit first (or ALLOW_DIRTY=1 for a trial)" >&2
  exit 2
fi
PY=${PY:-.venv/bin/python}
device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
slug=$($PY -c "
import re, torch
from diagonalwise.timing import device_name
print(re.sub(r'[^a-z0-9]+', '-', device_name('$device').lower()).strip('-'))")
out=benchmarks/results/${slug}-$(date +%Y%m%d)
models=${MODELS:-"mobilenet_v1 mobilenet_v2 mobilenet_v3_large efficientnet_b0 convnext_tiny regnet_y_400mf resnext50_32x4d x3d_style causal_conv1d"}
if [ "$device" = cuda ]; then half="--dtype float16 --dtype bfloat16"; else half="--dtype bfloat16"; fi
half_models=${HALF_MODELS:-$models}
for model in $models; do
  $PY -m diagonalwise bench --model "$model" --device "$device" --layout contiguous \
      --layout channels_last --dtype float32 --output "$out/$model" "$@"
done
# a user's own network, read from Darknet and Caffe files (the paper's MobileNet V1)
$PY -m diagonalwise bench --darknet-cfg examples/model_files/mobilenet_v1.cfg \
    --caffe-prototxt examples/model_files/mobilenet_v1.prototxt --device "$device" \
    --layout contiguous --layout channels_last --dtype float32 --output "$out/model_files" "$@"
for model in $half_models; do
  $PY -m diagonalwise bench --model "$model" --device "$device" --layout contiguous \
      --layout channels_last $half --output "$out/$model-half" "$@"
done
$PY -m diagonalwise report
echo "suite results in $out; tables in benchmarks/results/README.md, summary in README.md"
