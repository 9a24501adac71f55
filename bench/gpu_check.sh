#!/usr/bin/env bash
# What only a GPU can show, in one command, within 8 minutes on one NVIDIA GPU; writes a
# summary for bench/RESULTS.md.
#
#   bench/gpu_check.sh prepare            here (pip and a registry): wheels the GPU image lacks -> .whl/
#   bench/gpu_check.sh run [--dry-run]    on the GPU machine: install .whl/, then the checks
#
# `run` does, each under its own time limit (seconds, in the step table below):
#   1. python -m pytest tests/gpu
#   2. bench/engine.py --device cuda --preset 1b --dtype bfloat16   (with its roofline line)
#   3. bench/shim.py --device cuda
#   4. bench/frontend.py --levels 256                             (device-independent)
# and writes $GPU_CHECK_OUT/gpu_check_summary.md (default: $OUT when set, else bench/.gpu-check/)
# with each step's exit status, time and result lines, and one full log per step beside it.
# `--dry-run` checks what it can without a GPU: every import the steps need, each bench's
# --help, and prints the commands instead of running them.
#
# The GPU image has Python 3.12 with torch and transformers but not the service's own
# dependencies (gRPC extras, Flask, gunicorn, limits, ...): `prepare` downloads them, at the
# versions this checkout's venv holds, as cp312 manylinux wheels into .whl/ (ignored by git).
# The generated gRPC stubs (genapi/v1) and the embedded tiny models (models/) are build
# outputs, so a device run carries them too, e.g. with the device tool:
#   run(command="bench/gpu_check.sh run", carry=[".whl", "genapi/v1", "models"], timeout_s=540)
# Environment: PYTHON (default python3); GPU_CHECK_OUT (where the summary goes);
# GPU_CHECK_STEPS (names of the steps to run, e.g. "gpu-tests frontend": the CPU fallback).
set -uo pipefail
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"  # for the help text
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
WHEELS=.whl
# Pinned to the versions of the venv the project is tested with (pyproject.toml ranges).
PACKAGES=(
  grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.3
  googleapis-common-protos==1.76.0 protobuf==7.36.2
  flask==3.1.3 blinker==1.9.0 itsdangerous==2.2.0 werkzeug==3.1.9 gunicorn==27.0.1
  limits==5.8.0 deprecated==1.3.1
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  xgrammar==0.2.9
  openai==3.57.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  jiter==0.19.0 distro==1.9.0 sniffio==1.3.1
)
# name, time limit (s), command: 8 minutes in all, installation included.
STEPS=(
  "gpu-tests|90|$PY -m pytest tests/gpu -q -rs"
  "engine|150|$PY bench/engine.py --device cuda --preset 1b --dtype bfloat16 --hf-requests 4"
  "shim|120|$PY bench/shim.py --device cuda --rounds 1 --idle-samples 10"
  "frontend|90|$PY bench/frontend.py --levels 256 --tokens 128 --nonstream 100"
)
# Lines of each step's log that go into the summary.
RESULT_LINES='passed|failed|skipped|error|SKIPPED|FAILED|ERROR|roofline|tok/s|streams|ratio|µs/token|non-streamed|TTFT|Traceback'

say() { printf '[gpu_check] %s\n' "$*"; }

prepare() {
  mkdir -p "$WHEELS"
  local platforms=()
  for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
           manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS" "${PACKAGES[@]}" || { say "pip download failed"; exit 1; }
  say "$(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS/"
}

install() {  # $1 = 1: dry run (the wheels are for the GPU image's Python 3.12: listed, not installed)
  if [ "${1:-0}" = 1 ]; then
    say "dry run: $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels in $WHEELS/ not installed"
  elif "$PY" -c 'import flask, gunicorn, grpc_health, grpc_status, limits, jsonschema, xgrammar' 2>/dev/null; then
    say "the service's dependencies are installed already: $WHEELS/ not needed"
  elif [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl || { say "installing $WHEELS/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  [ -f genapi/v1/common_pb2.py ] || { say "genapi/v1 has no generated stubs: run ./build.sh here and carry genapi/v1"; exit 1; }
  [ -f models/tiny-chat/config.json ] || { say "models/tiny-chat is missing: run ./build.sh here and carry models"; exit 1; }
}

check_imports() {
  "$PY" - <<'EOF' || exit 1
import importlib
for m in ("grpc", "grpc_health.v1.health_pb2", "grpc_reflection.v1alpha.reflection", "grpc_status", "flask",
          "gunicorn", "limits", "jsonschema", "xgrammar", "openai", "aiohttp", "torch", "transformers",
          "genapi.v1.generation_service_pb2_grpc", "server.app", "shim"):
    importlib.import_module(m)
import torch
print(f"[gpu_check] imports ok; torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
EOF
}

run() {
  local dry=0
  [ "${1:-}" = "--dry-run" ] && dry=1
  local out=${GPU_CHECK_OUT:-${OUT:-bench/.gpu-check}}
  mkdir -p "$out"
  local summary=$out/gpu_check_summary.md t0=$SECONDS
  install $dry
  check_imports
  {
    echo "# bench/gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo '```'
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    echo '```'
  } >"$summary"
  export PYTHONUNBUFFERED=1
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$step"
    if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then
      continue
    fi
    if [ $dry = 1 ]; then
      say "would run ($limit s): $cmd"
      continue
    fi
    say "$name: $cmd"
    local s0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" $cmd >"$out/$name.log" 2>&1
    local rc=$?
    {
      echo
      echo "## $name: exit $rc in $((SECONDS - s0)) s$([ $rc = 124 ] && echo " (time limit $limit s)")"
      echo
      echo "\`$cmd\`"
      echo
      echo '```'
      grep -E "$RESULT_LINES" "$out/$name.log" | tail -40
      echo '```'
    } >>"$summary"
  done
  if [ $dry = 1 ]; then
    for b in engine shim frontend; do
      "$PY" "bench/$b.py" --help >/dev/null || { say "bench/$b.py --help failed"; exit 1; }
    done
    say "dry run ok: imports and the benches' arguments parse"
    return
  fi
  echo >>"$summary"
  echo "Total: $((SECONDS - t0)) s" >>"$summary"
  say "summary in $summary ($((SECONDS - t0)) s)"
  cat "$summary"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  -h|--help|help) sed -n '2,26s/^# \{0,1\}//p' "$SELF" ;;
  *) sed -n '2,26s/^# \{0,1\}//p' "$SELF"; exit 2 ;;
esac
