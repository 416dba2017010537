#!/usr/bin/env bash
# Distributed testing with torchrun: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args]
# Same launcher as dist_train.sh (gloo on machines without CUDA).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SCRIPT=test.py exec bash "$HERE/dist_train.sh" "$1" "$3" "$2" "${@:4}"
