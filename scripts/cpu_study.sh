#!/usr/bin/env bash
# The CPU training study of docs/cpu_study.md, end to end: records -> training -> export -> evaluation -> report.
#
#   bash scripts/cpu_study.sh [WORK_DIR]          (default WORK_DIR: /tmp/vfusion_cpu_study)
#
# Needs ../shared/data (m3svd_sample, m3svd_videos). Every stage resumes: the records are built once, training
# continues from its last checkpoint, and a finished evaluation is kept. Environment: PYTHON (default python),
# DATA (default ../shared/data), MAX_FRAMES (frames per m3svd_videos video, default 12), OUTPUT (report folder,
# default docs/cpu_study). About 30 minutes of training and 8 of evaluation on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-/tmp/vfusion_cpu_study}
PYTHON=${PYTHON:-python}
DATA=${DATA:-../shared/data}
MAX_FRAMES=${MAX_FRAMES:-12}
OUTPUT=${OUTPUT:-docs/cpu_study}
HELD_OUT=0111_1716

for folder in m3svd_sample m3svd_videos; do
  if [ ! -d "$DATA/$folder" ]; then
    echo "error: $DATA/$folder not found; the study trains and evaluates on the shared M3SVD data" >&2
    exit 1
  fi
done
mkdir -p "$WORK"

echo "== records: 2 training videos, $HELD_OUT held out"
"$PYTHON" -m vfusion_jax.data.build --manual_dir="$DATA/m3svd_sample" --data_dir="$WORK/tfds" \
  --test_videos="$HELD_OUT" --config_name=cpu_study

echo "== training (configs/m3svd.py:cpu_study)"
"$PYTHON" train.py --config=configs/m3svd.py:cpu_study --config.data.data_dir="$WORK/tfds" --workdir="$WORK/train"

echo "== export"
"$PYTHON" -m vfusion_jax.export --workdir="$WORK/train" --output="$WORK/ckpt" --overwrite

evaluate() {  # name data window [extra flags]
  local name=$1 data=$2 window=$3
  shift 3
  local out="$WORK/eval_${name}_T${window}"
  if [ -f "$out/metrics.json" ]; then
    echo "kept $out"
    return
  fi
  "$PYTHON" eval.py --config=configs/m3svd.py:cpu_study --checkpoint="$WORK/ckpt" --data="$data" \
    --setting=degraded --references=clean --fuse.window="$window" --output="$out" --overwrite "$@"
}

for window in 7 2; do
  echo "== evaluation, windows of $window frames"
  evaluate sample "$DATA/m3svd_sample" "$window" --videos="$HELD_OUT"
  evaluate videos "$DATA/m3svd_videos" "$window" --max_frames="$MAX_FRAMES"
done

echo "== report"
"$PYTHON" scripts/cpu_study_report.py --work="$WORK" --output="$OUTPUT" --data="$DATA"
