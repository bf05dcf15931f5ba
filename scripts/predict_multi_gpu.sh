#!/usr/bin/env bash
# Segment a folder of CTs on a GPU server: one background autoorgan process per GPU, each a shard.
#
#   scripts/predict_multi_gpu.sh -g 0,1,2,3 TASK INPUT OUTPUT [more 'autoorgan predict' options]
#
# Process i sees only GPU i of the list (CUDA_VISIBLE_DEVICES) and runs --part-id i --num-parts N
# --continue, logging to OUTPUT/logs/part<i>.log. The script waits for all of them, names every
# shard that failed, and exits non-zero if any did; run it again to redo only what is missing or
# failed. (`autoorgan predict --devices cuda:0,cuda:1 ...` does the same from one command.)
# Environment: AUTOORGAN = the command to run (default: autoorgan); GPUS instead of -g.
set -uo pipefail

gpus="${GPUS:-}"
if [ "${1:-}" = "-g" ] || [ "${1:-}" = "--gpus" ]; then
  gpus="${2:-}"
  shift 2 || true
fi
if [ "$#" -lt 3 ] || [ -z "$gpus" ]; then
  echo "usage: $0 -g 0,1,... TASK INPUT OUTPUT [autoorgan predict options]" >&2
  exit 2
fi
task=$1 input=$2 output=$3
shift 3
IFS=',' read -r -a gpu_list <<<"$gpus"
n=${#gpu_list[@]}
mkdir -p "$output/logs" || { echo "error: cannot create $output/logs" >&2; exit 4; }

pids=()
for i in "${!gpu_list[@]}"; do
  # shellcheck disable=SC2086  # AUTOORGAN may be a command with arguments
  CUDA_VISIBLE_DEVICES="${gpu_list[$i]}" ${AUTOORGAN:-autoorgan} predict --task "$task" --input "$input" \
    --output "$output" --part-id "$i" --num-parts "$n" --continue --quiet "$@" \
    >"$output/logs/part$i.log" 2>&1 &
  pids+=("$!")
  echo "part $i of $n on GPU ${gpu_list[$i]}: pid ${pids[$i]}, log $output/logs/part$i.log"
done
# Ctrl-C or a kill of this script ends the shards it started (by pid), not other processes.
trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM

failed=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "part $i (GPU ${gpu_list[$i]}): ok"
  else
    code=$?
    failed=$((failed + 1))
    echo "part $i (GPU ${gpu_list[$i]}): FAILED with exit code $code; last lines of its log:" >&2
    tail -n 3 "$output/logs/part$i.log" | sed 's/^/    /' >&2
  fi
done
if [ "$failed" -gt 0 ]; then
  echo "$failed of $n part(s) failed; fix the cause and run again (completed cases are kept)" >&2
  exit 1
fi
echo "all $n part(s) finished"
