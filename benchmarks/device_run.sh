#!/usr/bin/env bash
# bash benchmarks/device_run.sh cpu|gpu|profile|autotune [OUTDIR]   (on the device machine: the prepared checks of issue 11)
#   cpu       benchmarks/cpu_bf16_check.py on the host CPU (native bf16 there): the main job's step fp32 vs bf16,
#             then the main job at both precisions, seeds 1 and 2, four runs at a time (at most ~8 min)
#   gpu       benchmarks/gpu_check.py: CUDA tests, bf16 attention benchmark, gpt2_124m throughput, scan timing
#             (~5-8 min: no training variant starts 240 s into the training part or 400 s into the script)
#   profile   where the momentum steps' time goes (~3 min): torch.profiler over 3 steps of vanilla and momentum
#             compiled (kernel and matmul scan), momentum eager with the kernel (fused and as before session 34)
#             and multirate_ema eager, each
#             after its timed steps: the kernels' share of the step and the largest kernels
#   autotune  vanilla compiled with max-autotune-no-cudagraphs alone (its autotuning can take minutes): last,
#             only if device time is left
# Order for 15 minutes of device time: gpu, then profile (the machine stays warm between calls, 30 s), then cpu
# or autotune if time is left.
# Results go to OUTDIR (default: $OUT where the device tool sets it, else benchmarks/results). Before the call,
# here: `bash benchmarks/device_site.sh` (packages the image lacks), and name .devsite in the call's carry.
# One call per part keeps each under the device's 10-minute limit per command:
#   run(command="bash benchmarks/device_run.sh cpu", carry=[".devsite"], timeout_s=560)
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: device_run.sh cpu|gpu|profile|autotune [OUTDIR]}
out=${2:-${OUT:-benchmarks/results}}
[ -d .devsite ] && export PYTHONPATH="$PWD/.devsite${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python   # PYTHON= wins
# before anything is written (the results folder's files are tracked): a Python without torch said only
# ModuleNotFoundError, as a traceback, after device.txt and the log had been overwritten
"$PY" -c "import torch" 2>/dev/null || {
  echo "error: $PY cannot import torch: run this on the device machine (its image has torch), or set PYTHON= or set up .venv (bash scripts/setup.sh)" >&2; exit 2; }
case "$part" in cpu|gpu|profile|autotune) ;; *)  # before device.txt is written (the tracked results folder's)
  echo "unknown part '$part': cpu, gpu, profile or autotune" >&2; exit 2 ;;
esac
# the GPU parts on a machine without CUDA: gpu_check.py would skip and say so, but the tee below had already
# replaced the stored device log (benchmarks/results/gpu_log.txt) with that one line (found by review)
case "$part" in gpu|profile|autotune)
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || {
    echo "error: device_run.sh $part needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False); nothing was run or written. On a CPU: bash benchmarks/gpu_check.sh runs what it can and says what it skipped" >&2; exit 2; } ;;
esac
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tee "$out/device.txt"
lscpu 2>/dev/null | grep -E "Model name|^CPU\(s\)" >> "$out/device.txt"
# precision=auto trains a CPU in bf16 with AMX (amx_bf16 and amx_tile) or on AMD with avx512_bf16 (momattn/hardware.py)
echo "bf16 flags: $(grep -m1 -o -w -E 'avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')" >> "$out/device.txt"
case "$part" in
  # timeout: under the device's 560 s per call, so that the log is flushed; the JSON is written before and after
  # every variant, so a cut-off run keeps its rows and names the variant it was on
  gpu) timeout -k 10 540 "$PY" benchmarks/gpu_check.py --budget "${BUDGET:-240}" --deadline "${DEADLINE:-400}" \
         --out "$out/gpu.json" 2>&1 | tee "$out/gpu_log.txt" ;;
  profile) timeout -k 10 540 "$PY" benchmarks/gpu_check.py --parts train --profile 3 \
             --variants "vanilla+compile,momentum/triton+compile,momentum/torch+compile,momentum/triton,momentum/triton-unfused,multirate_ema" \
             --budget 400 --deadline 420 --out "$out/gpu_profile.json" 2>&1 | tee "$out/profile_log.txt" ;;
  autotune) timeout -k 10 540 "$PY" benchmarks/gpu_check.py --parts train \
              --variants "vanilla+compile:max-autotune-no-cudagraphsx2" --out "$out/gpu_autotune.json" 2>&1 \
              | tee "$out/autotune_log.txt" ;;
  cpu) "$PY" benchmarks/cpu_bf16_check.py --threads 4 --parallel 4 --timeout "${TIMEOUT:-420}" --out "$out/cpu_bf16.json" \
         2>&1 | tee "$out/cpu_log.txt" ;;
esac
