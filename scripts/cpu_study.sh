#!/usr/bin/env bash
# The CPU training study of docs/cpu_study.md, end to end: records -> two training stages -> export -> controls
# -> evaluation matrix -> report.
#
#   bash scripts/cpu_study.sh [WORK_DIR]          (default WORK_DIR: /tmp/vfusion_cpu_study)
#
# Needs ../shared/data (m3svd_sample, m3svd_videos). Every stage resumes: the records are built once, training
# continues from its last checkpoint, and a finished evaluation is kept. Environment: PYTHON (default python),
# DATA (default ../shared/data), MAX_FRAMES (frames of the held-out mp4, default 28 = 4 windows of 7), OUTPUT
# (report folder, default docs/cpu_study), EXTRA_SEEDS (seeds trained beside the study model's, the config's
# 3047; default "2 3", empty for none), MAIN (default 1; 0 skips the study model, its arms and their evaluations
# and runs the extra seeds only, whose report merges with the evaluations already in OUTPUT/metrics.json: a
# seed per session fits a 3-hour budget), CLEAN_ARMS (seeds of EXTRA_SEEDS whose stage 2 runs a second time
# with every clip clean, data.clean_fraction=1, in WORK/seed<N>/clean: the clean-share arm; default none). About
# 2 h 30 min of training and 1 h 50 min of evaluation on an idle 2-core Xeon, and 2 h + 40 min more per extra
# seed (1 h 20 min + 20 min on a 2-core EPYC; a clean-share arm adds ~30 min + 10 min there).
#
# Training (configs/m3svd.py:cpu_study): stage 1 trains on degraded clips of T = 4 only, on a cosine schedule of
# 6,000 steps, and stops at step 2,250 (config.stop_after_step); stage 2 starts from that checkpoint (parameters,
# Adam state, input position) on clips of T = 7, the official inference window, with 25 % clean clips
# (data.clean_fraction) and a fresh cosine schedule ending at step 3,500. The clip-length arm (WORK/t4) runs
# stage 2 again on clips of T = 4.
#
# Held out, never trained on: 0111_1716 (frame folders with the release's own degraded frames) and 1230_1202
# (mp4, synthetic degradation). The mp4 0111_1716 is the same recording as its frame folder and is not used.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-/tmp/vfusion_cpu_study}
PYTHON=${PYTHON:-python}
DATA=${DATA:-../shared/data}
MAX_FRAMES=${MAX_FRAMES:-28}
OUTPUT=${OUTPUT:-docs/cpu_study}
EXTRA_SEEDS=${EXTRA_SEEDS-2 3}
MAIN=${MAIN:-1}
CLEAN_ARMS=${CLEAN_ARMS:-}
HELD_OUT_FRAMES=0111_1716
HELD_OUT_MP4=1230_1202
CONFIG=configs/m3svd.py:cpu_study
STAGE1_TOTAL=6000
STAGE1_STOP=2250
STAGE1_FRAMES=4
STAGE2_END=3500

for folder in m3svd_sample m3svd_videos; do
  if [ ! -d "$DATA/$folder" ]; then
    echo "error: $DATA/$folder not found; the study trains and evaluates on the shared M3SVD data" >&2
    exit 1
  fi
done
if [ "$MAIN" != 1 ] && { [ -z "$EXTRA_SEEDS" ] || [ ! -f "$OUTPUT/metrics.json" ]; }; then
  echo "error: MAIN=0 runs the seeds of EXTRA_SEEDS ('$EXTRA_SEEDS') beside the evaluations of $OUTPUT/metrics.json;" \
    "both are needed" >&2
  exit 1
fi
mkdir -p "$WORK/eval"

echo "== records: 2 training videos, $HELD_OUT_FRAMES held out"
"$PYTHON" -m vfusion_jax.data.build --manual_dir="$DATA/m3svd_sample" --data_dir="$WORK/tfds" \
  --test_videos="$HELD_OUT_FRAMES" --config_name=cpu_study

train() {  # workdir [flags]
  local workdir=$1
  shift
  "$PYTHON" train.py --config="$CONFIG" --config.data.data_dir="$WORK/tfds" --workdir="$workdir" "$@"
}

require_checkpoint() {  # workdir step: a stage stopped early (SIGTERM, preemption) exits 0 with a checkpoint
  if [ ! -d "$1/checkpoints/$2" ]; then
    echo "error: $1 has no checkpoint of step $2 (interrupted?); run the script again to resume" >&2
    exit 1
  fi
}

stage1() {  # root [flags]: degraded clips of T = $STAGE1_FRAMES only, in root/stage1
  local root=$1
  shift
  echo "== training $root, stage 1: degraded clips of $STAGE1_FRAMES frames only, stops at step $STAGE1_STOP of a" \
    "$STAGE1_TOTAL-step schedule"
  train "$root/stage1" --config.total_steps="$STAGE1_TOTAL" --config.stop_after_step="$STAGE1_STOP" \
    --config.data.clean_fraction=0 --config.num_frames="$STAGE1_FRAMES" "$@"
  require_checkpoint "$root/stage1" "$STAGE1_STOP"
}

stage2() {  # root workdir [flags]: from root's stage-1 checkpoint, the config's clean share, in workdir
  local root=$1 workdir=$2
  shift 2
  echo "== training $workdir, stage 2: from step $STAGE1_STOP of $root/stage1, the config's clean share of clips $*"
  if [ ! -d "$workdir/checkpoints" ]; then  # the stage-1 checkpoint, copied whole before it is published
    mkdir -p "$workdir"
    rm -rf "$workdir/checkpoints.partial"
    mkdir "$workdir/checkpoints.partial"
    cp -r "$root/stage1/checkpoints/$STAGE1_STOP" "$workdir/checkpoints.partial/"
    mv "$workdir/checkpoints.partial" "$workdir/checkpoints"
  fi
  train "$workdir" --config.total_steps="$STAGE2_END" "$@"
  require_checkpoint "$workdir" "$STAGE2_END"
}

train_recipe() {  # root [flags]: the recipe's two stages, in root/stage1 and root/train
  stage1 "$@"
  stage2 "$1" "$1/train" "${@:2}"
}

evaluate() {  # name checkpoint data setting window overlap [extra flags]
  local name=$1 ckpt=$2 data=$3 setting=$4 window=$5 overlap=$6
  shift 6
  local out="$WORK/eval/$name"
  if [ -f "$out/metrics.json" ]; then
    echo "kept $out"
    return
  fi
  echo "== evaluation $name"
  "$PYTHON" eval.py --config="$CONFIG" --checkpoint="$ckpt" --data="$data" --setting="$setting" \
    --references=clean --fuse.window="$window" --fuse.overlap="$overlap" --fuse.rule=blend --output="$out" \
    --overwrite --noplots --nosave_restored "$@"
}

# Names: <model>_<video>_<setting>_<windows>; w7 = the official non-overlapping windows of 7, w7o3 = windows of
# 7 overlapping by 3 with the blend rule, w2 = frame pairs. Baselines are computed once per video and setting.
FRAMES=("$DATA/m3svd_sample" --videos="$HELD_OUT_FRAMES")
MP4=("$DATA/m3svd_videos" --videos="$HELD_OUT_MP4" --max_frames="$MAX_FRAMES")
if [ "$MAIN" = 1 ]; then
  train_recipe "$WORK"
  # The clip-length arm: stage 2 on clips of T = $STAGE1_FRAMES (as stage 1) instead of the config's 7.
  stage2 "$WORK" "$WORK/t4" --config.num_frames="$STAGE1_FRAMES"

  echo "== export: the study model, the T = $STAGE1_FRAMES arm, the stage-1 model and the untrained control"
  "$PYTHON" -m vfusion_jax.export --workdir="$WORK/train" --output="$WORK/ckpt" --overwrite
  "$PYTHON" -m vfusion_jax.export --workdir="$WORK/t4" --output="$WORK/ckpt_t4" --overwrite
  "$PYTHON" -m vfusion_jax.export --workdir="$WORK/stage1" --step="$STAGE1_STOP" --output="$WORK/ckpt_stage1" \
    --overwrite
  "$PYTHON" scripts/untrained_checkpoint.py --config="$CONFIG" --output="$WORK/ckpt_untrained" --overwrite

  for setting in degraded normal; do
    evaluate "final_frames_${setting}_w7" "$WORK/ckpt" "${FRAMES[0]}" "$setting" 7 0 "${FRAMES[@]:1}"
    evaluate "final_frames_${setting}_w7o3" "$WORK/ckpt" "${FRAMES[0]}" "$setting" 7 3 "${FRAMES[@]:1}" --nobaselines
    evaluate "final_frames_${setting}_w2" "$WORK/ckpt" "${FRAMES[0]}" "$setting" 2 0 "${FRAMES[@]:1}" --nobaselines
    evaluate "final_mp4_${setting}_w7" "$WORK/ckpt" "${MP4[0]}" "$setting" 7 0 "${MP4[@]:1}"
    evaluate "final_mp4_${setting}_w2" "$WORK/ckpt" "${MP4[0]}" "$setting" 2 0 "${MP4[@]:1}" --nobaselines
    evaluate "stage1_frames_${setting}_w7" "$WORK/ckpt_stage1" "${FRAMES[0]}" "$setting" 7 0 "${FRAMES[@]:1}" \
      --nobaselines
    evaluate "untrained_frames_${setting}_w7" "$WORK/ckpt_untrained" "${FRAMES[0]}" "$setting" 7 0 \
      "${FRAMES[@]:1}" --nobaselines
    for windows in 7 4 2; do
      evaluate "t4_frames_${setting}_w$windows" "$WORK/ckpt_t4" "${FRAMES[0]}" "$setting" "$windows" 0 \
        "${FRAMES[@]:1}" --nobaselines
    done
    evaluate "t4_mp4_${setting}_w7" "$WORK/ckpt_t4" "${MP4[0]}" "$setting" 7 0 "${MP4[@]:1}" --nobaselines
    evaluate "t4_mp4_${setting}_w2" "$WORK/ckpt_t4" "${MP4[0]}" "$setting" 2 0 "${MP4[@]:1}" --nobaselines
  done
fi

# Seeds: the same recipe with other values of config.seed (initial parameters, clip sampling, degradation
# draws), each in WORK/seed<N>, exported to WORK/ckpt_seed<N> and evaluated on both videos and settings with the
# official windows and with frame pairs (the goals' measurements): their spread is the report's seed table.
for seed in $EXTRA_SEEDS; do
  train_recipe "$WORK/seed$seed" --config.seed="$seed"
  "$PYTHON" -m vfusion_jax.export --workdir="$WORK/seed$seed/train" --output="$WORK/ckpt_seed$seed" --overwrite
  for setting in degraded normal; do
    evaluate "seed${seed}_frames_${setting}_w7" "$WORK/ckpt_seed$seed" "${FRAMES[0]}" "$setting" 7 0 \
      "${FRAMES[@]:1}" --nobaselines
    evaluate "seed${seed}_frames_${setting}_w2" "$WORK/ckpt_seed$seed" "${FRAMES[0]}" "$setting" 2 0 \
      "${FRAMES[@]:1}" --nobaselines
    evaluate "seed${seed}_mp4_${setting}_w7" "$WORK/ckpt_seed$seed" "${MP4[0]}" "$setting" 7 0 "${MP4[@]:1}" \
      --nobaselines
    evaluate "seed${seed}_mp4_${setting}_w2" "$WORK/ckpt_seed$seed" "${MP4[0]}" "$setting" 2 0 "${MP4[@]:1}" \
      --nobaselines
  done
  if [[ " $CLEAN_ARMS " == *" $seed "* ]]; then  # the clean-share arm: same stage 1, stage 2 on clean clips only
    stage2 "$WORK/seed$seed" "$WORK/seed$seed/clean" --config.seed="$seed" --config.data.clean_fraction=1
    "$PYTHON" -m vfusion_jax.export --workdir="$WORK/seed$seed/clean" --output="$WORK/ckpt_clean$seed" --overwrite
    for setting in degraded normal; do
      evaluate "clean${seed}_frames_${setting}_w7" "$WORK/ckpt_clean$seed" "${FRAMES[0]}" "$setting" 7 0 \
        "${FRAMES[@]:1}" --nobaselines
      evaluate "clean${seed}_mp4_${setting}_w7" "$WORK/ckpt_clean$seed" "${MP4[0]}" "$setting" 7 0 "${MP4[@]:1}" \
        --nobaselines
    done
  fi
done

echo "== report"
report_flags=()
if [ "$MAIN" != 1 ]; then  # the seeds beside the evaluations kept in OUTPUT/metrics.json
  report_flags=(--record="$OUTPUT/metrics.json" --tables=seeds)
fi
"$PYTHON" scripts/cpu_study_report.py --work="$WORK" --output="$OUTPUT" --data="$DATA" "${report_flags[@]}"
