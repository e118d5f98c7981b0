#!/usr/bin/env bash
# What bench/gpu.sh needs on a GPU machine that reaches no network and has its own Python with torch, numpy,
# Pillow, matplotlib and the like, but not the product's serving stack: onnxruntime-gpu, TorchServe (and a Java
# runtime for its frontend, made with jlink), torch-model-archiver and the product's gRPC and protobuf pins.
#
#   bench/gpu-setup.sh pack                 here: wheels for Python 3.12 into runs/gpu-carry/wheels, installed
#                                           into one xz tar split into runs/gpu-carry/part-N/ (each <= 60 MiB)
#   bench/gpu-setup.sh stash DIR            there: keep the piece in DIR under $ABN_CARRY (one call per piece)
#   source bench/gpu-setup.sh env           there, after the last piece: unpack once, then PYTHONPATH,
#                                           JAVA_HOME and ABN_PYTHON for bench/gpu.sh
set -euo pipefail
ABN_CARRY=${ABN_CARRY:-/tmp/abn-carry}
PY=${ABN_PYTHON:-python3}
WHEELS=(onnxruntime-gpu==1.31.1 torchserve==0.12.0 torch-model-archiver==0.12.0 enum-compat grpcio==1.85.3
        protobuf==7.36.2 googleapis-common-protos==1.76.0 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1)
JAVA_MODULES=java.base,java.logging,java.management,java.naming,java.sql,java.xml,java.desktop,jdk.unsupported,\
java.net.http,java.security.jgss,jdk.crypto.ec,java.scripting,jdk.management,java.instrument,java.rmi,\
jdk.naming.dns,jdk.zipfs,java.transaction.xa,jdk.crypto.cryptoki,java.compiler

pack() {
    local root=runs/gpu-carry platform=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform any)
    rm -rf "$root/bundle" "$root"/part-* "$root"/bundle.tar.xz.*
    mkdir -p "$root/wheels" "$root/bundle"
    .venv/bin/python -m pip download --no-deps "${platform[@]}" -d "$root/wheels" "${WHEELS[@]}"
    .venv/bin/python -m pip install --no-deps --no-compile "${platform[@]}" --target "$root/bundle/site" \
        "$root"/wheels/*.whl
    rm -rf "$root"/bundle/site/bin "$root"/bundle/site/onnxruntime/capi/libonnxruntime_providers_tensorrt.so
    jlink --add-modules "$JAVA_MODULES" --strip-debug --no-header-files --no-man-pages --output "$root/bundle/java"
    tar -C "$root/bundle" -cf - site java | xz -6 -T2 | split -b 60M -d -a 1 - "$root/bundle.tar.xz."
    for piece in "$root"/bundle.tar.xz.*; do
        mkdir -p "$root/part-${piece##*.}"
        mv "$piece" "$root/part-${piece##*.}/"
    done
    du -sh "$root"/part-*
}

stash() {
    mkdir -p "$ABN_CARRY"
    cp "$1"/bundle.tar.xz.* "$ABN_CARRY/"
    ls -la "$ABN_CARRY"
}

env_() {
    if [ ! -d "$ABN_CARRY/site" ]; then
        cat "$ABN_CARRY"/bundle.tar.xz.* | "$PY" -c 'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$ABN_CARRY"
        chmod +x "$ABN_CARRY"/java/bin/*
    fi
    # the archive builder and the TorchServe process find these beside the Python that runs them
    local bin
    bin=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')
    printf '#!%s\nfrom ts.model_server import start\nstart()\n' "$bin/python3" > "$bin/torchserve"
    printf '#!%s\nfrom model_archiver.model_packaging import generate_model_archive\ngenerate_model_archive()\n' \
        "$bin/python3" > "$bin/torch-model-archiver"
    chmod +x "$bin/torchserve" "$bin/torch-model-archiver"
    export PYTHONPATH="$ABN_CARRY/site${PYTHONPATH:+:$PYTHONPATH}" JAVA_HOME="$ABN_CARRY/java" ABN_PYTHON="$bin/python3"
    export PATH="$JAVA_HOME/bin:$PATH"
    "$PY" -c 'import onnxruntime, grpc, ts; print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers(), "grpc", grpc.__version__)'
}

case "${1:-}" in
    pack) pack ;;
    stash) stash "$2" ;;
    env) env_ ;;
    *) echo "usage: bench/gpu-setup.sh pack | stash DIR | env (sourced)" >&2; exit 2 ;;
esac
