#!/usr/bin/env bash
# GPU checks for a machine with no network (embedded model + bundled data only), at most 8 minutes:
# LoRA bf16 + sdpa + packing, 4-bit QLoRA, DeepSpeed ZeRO-2 on one GPU, full fine-tuning, RM and DPO
# steps, generation, PPO and GRPO steps; prints tokens/s, peak memory and MFU. Checks whose packages are missing say
# "skipped: X not installed". Test it on a CPU with: bash bench/gpu_check.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The 8-minute bound is for the GPU run; --tiny on a busy CPU may take longer.
case " $* " in *" --tiny "*) exec "$PY" bench/gpu_check.py "$@" ;; esac
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py "$@"
