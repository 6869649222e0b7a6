#!/usr/bin/env bash
# The GPU checks of issue 8 that are still open, sized for one device call of under 9 minutes (the limits below add
# up to 535 s). Each step has its own time limit, so one that hangs cannot take the others' time.
#
#   experiments/benchmarks/gpu_session.sh OUT_DIR      # e.g. "$OUT" on the device machine
#
# Writes one log per step (8 files, the most that come back from one device call) and prints the tables. Needs
# torch with CUDA, lightning, torchmetrics, torchvision and pytest; segen is found from the repository root (no
# install needed).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
B=experiments/benchmarks/benchmark.py

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    timeout -s INT "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $?"
    grep -E '^\[|^Measured|^\| |^U-Net|host-device|per step|\(none\)|passed|skipped|failed|Error' "$out/$name.log" | grep -v '^| ---'
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step cuda_tests 45 python3 -m pytest -q -rs -p no:cacheprovider tests/tasks/test_gan_task.py tests/tasks/test_train_logging.py tests/test_no_sync.py -k cuda
step guard_on 60 python3 $B --only seg gan vae vqvae --read-losses end --repeats 2
step guard_off 75 python3 $B --only seg gan vae vqvae lightning --read-losses end --nan-policy off --repeats 2
step syncs 50 python3 experiments/benchmarks/sync_check.py --row seg gan vae vqvae
step steps 80 python3 $B --only seg gan vae vqvae --repeats 2
step large 110 python3 $B --only seg gan vae vqvae --size large --repeats 2
step gpu 85 python3 $B --only gpu --repeats 2
step profile 30 python3 experiments/benchmarks/profile_step.py --row gan --steps 10
