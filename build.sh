#!/usr/bin/env bash
# Install genapi into ./.venv, generate the gRPC stubs, the embedded tiny chat model and
# the tiny cross-encoder; with npm, also the pinned buf (protos lint and breaking) into
# ./.tools/buf; the playground's front-end libraries (marked, DOMPurify) from npm into
# shim/playground/vendor; Debian's chromium for the browser tests (apt-get, when root);
# espeak-ng and postgresql (Debian) for the transcription and PostgreSQL store tests; then
# the example clients in clients/ (TypeScript, Go, C++), their toolchains with apt-get when root.
#
#   ./build.sh                  install (idempotent; fast when nothing changed)
#   ./build.sh serve [args...]  install, then `genapi serve args...`
#   ./build.sh test [args...]   install, then `python -m pytest args...`
#
# Environment: PYTHON (interpreter used to create the venv, default python3);
# GENAPI_SKIP_CLIENTS=1 skips the client toolchains and clients (their tests then skip);
# GENAPI_SKIP_BROWSER=1 skips Debian's chromium (the browser tests then skip).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

TORCH_VERSION=2.13.0
BUF_VERSION=1.75.0
MARKED_VERSION=18.2.1
DOMPURIFY_VERSION=3.4.18
VENV=.venv
PY=$VENV/bin/python
STAMP=$VENV/.genapi-install-stamp
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '[build] %s\n' "$*"; }
die() { printf '[build] error: %s\n' "$*" >&2; exit 1; }
# debian_install NAME "PACKAGES" "WITHOUT": installs Debian packages when root (retrying once
# after `apt-get update`; log in .tools/apt-NAME.log), else says how; WITHOUT says what
# happens without them.
debian_install() {
  local pkgs=$2 without=$3 log=.tools/apt-$1.log
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's $pkgs (apt-get install)"
    mkdir -p .tools
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends $pkgs >"$log" 2>&1 \
        || { apt-get update -q >>"$log" 2>&1 \
             && apt-get install -y -q --no-install-recommends $pkgs >>"$log" 2>&1; }; } \
      || say "warning: apt-get could not install $pkgs (see $log); $without"
  else
    say "warning: as root, apt-get install $pkgs; until then $without"
  fi
}

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0"; }

cmd=install
if [ $# -gt 0 ]; then
  case "$1" in
    install|serve|test) cmd=$1; shift ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage >&2; die "unknown command: $1" ;;
  esac
fi
[ "$cmd" = install ] && [ $# -gt 0 ] && die "install takes no arguments"

# 1. virtual environment ------------------------------------------------------------
if [ ! -x "$PY" ] || ! "$PY" -c '' 2>/dev/null; then
  base=${PYTHON:-python3}
  command -v "$base" >/dev/null || die "$base not found (Python >= 3.11 is required)"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$base is $("$base" -V 2>&1); Python >= 3.11 is required"
  say "creating $VENV with $("$base" -V 2>&1)"
  rm -rf "$VENV"
  "$base" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi

# 2-3. dependencies, skipped while pyproject.toml and this script are unchanged ----------
want=$(cat pyproject.toml setup.py build.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ]; then
  say "dependencies up to date"
else
  rm -f "$STAMP"
  say "upgrading pip"
  "$PY" -m pip install -q --upgrade pip
  if "$PY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
sys.exit(md.version("torch").split("+")[0] != sys.argv[1])
EOF
  then
    say "torch $TORCH_VERSION already installed"
  else
    # First and pinned, so that the extras below do not pull a CUDA build of torch.
    say "installing torch==$TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  say "installing genapi and its dependencies (pip install -e .[torch,s3,postgres,redis,otel,test,bench,dev])"
  "$PY" -m pip install -q -e ".[torch,s3,postgres,redis,otel,test,bench,dev]"
  printf '%s\n' "$want" > "$STAMP"
fi

# 4. gRPC stubs (genapi/v1/*_pb2.py, *_pb2.pyi, *_pb2_grpc.py, gitignored), regenerated
#    when a proto or the generator changed, or a proto was removed ----------------------
"$PY" -m tools.gen_stubs --if-stale

# 5. Debian toolchains of the example clients (protoc, grpc++, Go with Debian's gRPC
#    sources; npm when missing), installed non-interactively when root; quiet when present.
CLIENT_PKGS="protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev pkg-config g++ make
  golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev
  golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc"
if [ "${GENAPI_SKIP_CLIENTS:-0}" != 1 ]; then
  command -v npm >/dev/null 2>&1 || CLIENT_PKGS="$CLIENT_PKGS nodejs npm"
  missing=$(for p in $CLIENT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s ' "$p"
  done)
  [ -z "$missing" ] || debian_install clients "${missing% }" "the client tests will skip"
fi

# 6. buf for `buf lint` / `buf breaking` of protos/ (tests/unit/test_protos.py skips
#    without it): pinned, into .tools/buf (gitignored); skipped quietly without npm ------
BUF=.tools/buf/node_modules/.bin/buf
if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null || true)" = "$BUF_VERSION" ]; then
  say "buf $BUF_VERSION up to date"
elif command -v npm >/dev/null 2>&1; then
  say "installing buf $BUF_VERSION into .tools/buf (npm @bufbuild/buf)"
  npm install --prefix .tools/buf --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION" >/dev/null \
    || say "warning: could not install buf; tests/unit/test_protos.py will skip the buf checks"
fi

# 6b. the playground's markdown renderer and sanitizer (marked, DOMPurify), pinned, from
#     npm into .tools/playground, their ES modules and licences copied into
#     shim/playground/vendor (gitignored; the page renders answers as plain text without
#     them); then Debian's chromium for tests/browser (apt-get when root) -----------------
VENDOR=shim/playground/vendor
VENDOR_STAMP="$VENDOR/.versions"
want_vendor="marked@$MARKED_VERSION dompurify@$DOMPURIFY_VERSION"
if [ "$(cat "$VENDOR_STAMP" 2>/dev/null || true)" = "$want_vendor" ] && [ -f "$VENDOR/marked.esm.js" ] \
    && [ -f "$VENDOR/purify.es.mjs" ]; then
  say "playground libraries up to date ($want_vendor)"
elif command -v npm >/dev/null 2>&1; then
  say "installing the playground libraries ($want_vendor) into $VENDOR"
  nm=.tools/playground/node_modules
  if npm install --prefix .tools/playground --no-audit --no-fund --silent --no-save $want_vendor >/dev/null; then
    rm -rf "$VENDOR" && mkdir -p "$VENDOR"
    cp "$nm/marked/lib/marked.esm.js" "$VENDOR/marked.esm.js"
    cp "$nm/marked/LICENSE" "$VENDOR/LICENSE.marked"
    cp "$nm/dompurify/dist/purify.es.mjs" "$VENDOR/purify.es.mjs"
    cp "$nm/dompurify/LICENSE" "$VENDOR/LICENSE.dompurify"
    printf '%s\n' "$want_vendor" > "$VENDOR_STAMP"
  else
    say "warning: npm could not install $want_vendor; the playground renders answers as plain text"
  fi
else
  say "warning: npm not found: the playground renders answers as plain text (no marked/DOMPurify)"
fi
if [ "${GENAPI_SKIP_BROWSER:-0}" != 1 ] && ! command -v chromium >/dev/null 2>&1; then
  debian_install chromium chromium "tests/browser will skip"
fi

# 6c. Debian's redis-server for the shared rate-limit tests (tests/integration/
#     test_limits_shared.py starts one on loopback; they skip without it), when root -----
command -v redis-server >/dev/null 2>&1 \
  || debian_install redis redis-server "the Redis tests will skip"

# 6d. Debian's postgresql (initdb, pg_ctl) for the PostgreSQL store tests (tests/unit/
#     test_store.py and tests/integration/test_replicas.py start a throw-away cluster on
#     loopback; they skip without it), when root -------------------------------------------
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || debian_install postgresql postgresql "the PostgreSQL tests will skip"

# 7. the embedded tiny chat model, the tiny cross-encoder of the rerank tests and the tiny
#    Whisper of transcription (each prints "up to date" when nothing changed) -----------
"$PY" -m tools.tiny_models --out models/tiny-chat --preset tiny
"$PY" -m tools.tiny_cross_encoder --out models/tiny-cross-encoder
"$PY" -m tools.tiny_whisper --out models/tiny-whisper
# the tiny chat model's reasoning variant (same weights, a template that opens <think>)
"$PY" -m tools.reasoning_variant --base models/tiny-chat --out models/tiny-chat-reasoning
# the tiny vision-language model (LLaVA: the tiny chat LM with a tiny CLIP tower), seconds
"$PY" -m tools.tiny_llava --base models/tiny-chat --out models/tiny-vision
# the tiny audio-language model (Qwen2-Audio: the tiny chat LM with a tiny audio encoder)
"$PY" -m tools.tiny_qwen2_audio --base models/tiny-chat --out models/tiny-audio
# the tiny Mistral3 model (the tiny chat LM in a Mistral decoder with a tiny Pixtral tower),
# seconds; served by the multimodal tests' config, not the default one
"$PY" -m tools.tiny_pixtral --base models/tiny-chat --out models/tiny-pixtral

# 7b. espeak-ng (Debian) speaks the transcription tests' audio; without it (not root, no
#     apt) the tests fall back to a generated tone ---------------------------------------
command -v espeak-ng >/dev/null 2>&1 \
  || debian_install espeak espeak-ng "the transcription tests use a generated tone"

# 8. example clients: stubs from protos/buf.gen.yaml, then each client, when changed ----
if [ "${GENAPI_SKIP_CLIENTS:-0}" = 1 ]; then
  say "skipping the example clients (GENAPI_SKIP_CLIENTS=1)"
else
  PY="$PY" BUF="$BUF" clients/build.sh
fi

case "$cmd" in
  serve)
    [ -x "$VENV/bin/genapi" ] || die "$VENV/bin/genapi is missing (is [project.scripts] genapi in pyproject.toml?)"
    exec "$VENV/bin/genapi" serve "$@"
    ;;
  test)
    exec "$PY" -m pytest "$@"
    ;;
esac
say "done"
