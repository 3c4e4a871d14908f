#!/usr/bin/env bash
# GPU checks for a machine with no network, at most 9 minutes. By default (--suite=real): models of
# Llama-3.2-1B's and Llama-3.1-8B's shapes with random weights, packed 4096-token rows, LoRA r16 bf16,
# QLoRA 4-bit, full fine-tuning with ZeRO-2, each through sftkit and through TRL's SFTTrainer in the same
# run; --suite=small: the embedded model's LoRA/QLoRA/ZeRO-2/full/RM/DPO/generation checks
# and PPO/GRPO steps. Prints
# tokens/s, peak memory, MFU and the ratio to TRL. Packages the machine lacks (trl for the baseline,
# deepspeed, bitsandbytes) are installed from wheels in $GPU_CHECK_WHEELS (default .whl/, git-ignored,
# carried with the tree), made beforehand where there is a network:
#   pip wheel --no-deps -w .whl trl==1.16.0 deepspeed bitsandbytes
# Checks whose packages are still missing say "skipped: X not installed".
# Test it on a CPU with: bash bench/gpu_check.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl \
    || echo "gpu_check: some wheels in $WHEELS did not install; their checks will be skipped"
fi
# The 9-minute bound is for the GPU run; --tiny on a busy CPU may take longer.
case " $* " in *" --tiny "*) exec "$PY" bench/gpu_check.py "$@" ;; esac
exec timeout "${GPU_CHECK_TIMEOUT:-540}" "$PY" bench/gpu_check.py "$@"
