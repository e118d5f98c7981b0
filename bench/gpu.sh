#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py): fp32 and fp16 builds of abn_resnet50 at 224, checked and timed on one
# GPU, within 8 minutes. --dry-run builds and checks abn_small on the CPU without timing. ABN_PYTHON names a
# Python other than .venv's that has the product's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 "${ABN_PYTHON:-.venv/bin/python}" -m bench.gpu "$@"
