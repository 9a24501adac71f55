#!/usr/bin/env bash
# Generates the gRPC stubs of the example clients from protos/ and builds the clients:
# TypeScript (Node), Go and C++. Called by ./build.sh from the repository root; by hand:
#
#   clients/build.sh            (PY=.venv/bin/python BUF=.tools/buf/node_modules/.bin/buf)
#
# Nothing it writes is committed (see .gitignore). Generation runs when a proto,
# protos/buf.gen.yaml or a plugin changed; each client is rebuilt only when its
# fingerprint (generated stubs, its sources, its compiler's version) changed. A client
# that cannot be built here is reported, and its reason written to
# clients/.build/<lang>.skip, which tests/integration/test_clients.py gives as its skip
# reason (under CI=true those tests fail instead). The toolchains themselves are
# installed by ./build.sh.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
BUF=${BUF:-.tools/buf/node_modules/.bin/buf}
OUT=clients/.build
TS_PLUGIN=clients/ts/node_modules/.bin/protoc-gen-ts_proto
LANGS="ts go cpp"
# Plaintext GOPATH build against Debian's /usr/share/gocode (no module proxy needed).
export GO111MODULE=off GOFLAGS= GOPATH="$PWD/clients/go/.gopath:/usr/share/gocode" GOCACHE="$PWD/clients/.build/go-cache"

say() { printf '[clients] %s\n' "$*"; }
mkdir -p "$OUT"

# What each client's build produces (the tests run these).
declare -A BUILT=([ts]=clients/ts/dist/example.js [go]=clients/go/build/example [cpp]=clients/cpp/build/example)

# skip LANG REASON: record why LANG is not built (tests show it) and remove its old
# build, so that no test runs a client built from other sources.
skip() {
  say "$1: not built: $2"
  printf '%s\n' "$2" > "$OUT/$1.skip"
  rm -f "$OUT/$1.stamp" "${BUILT[$1]}"
}

# fingerprint FILE... [-- TEXT...]: sha256 of the files' contents and of TEXT.
fingerprint() {
  local files=() text=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do files+=("$1"); shift; done
  [ $# -gt 0 ] && shift && text=("$@")
  { cat "${files[@]}"; printf '%s\n' "${text[@]}"; } | sha256sum | cut -d' ' -f1
}

# up_to_date LANG FP: true when LANG was built from FP and its output still exists.
up_to_date() { [ "$(cat "$OUT/$1.stamp" 2>/dev/null)" = "$2" ] && [ -e "$3" ]; }
built() { printf '%s\n' "$2" > "$OUT/$1.stamp"; rm -f "$OUT/$1.skip"; }

# 1. TypeScript dependencies (npm ci from the committed lock file) ------------------------
if command -v npm >/dev/null 2>&1; then
  lock=$(fingerprint clients/ts/package-lock.json)
  if [ "$(cat clients/ts/node_modules/.genapi-stamp 2>/dev/null)" != "$lock" ]; then
    say "installing the TypeScript client's npm packages (clients/ts/node_modules)"
    if npm ci --prefix clients/ts --no-audit --no-fund --loglevel=error >/dev/null; then
      printf '%s\n' "$lock" > clients/ts/node_modules/.genapi-stamp
    fi
  fi
fi

# 2. What is missing for generation (all plugins run in one `buf generate`) ---------------
missing=()
[ -x "$BUF" ] || missing+=("buf ($BUF; ./build.sh installs it with npm)")
[ -x "$TS_PLUGIN" ] || missing+=("ts-proto (npm ci --prefix clients/ts)")
for tool in node protoc protoc-gen-go protoc-gen-go-grpc grpc_cpp_plugin go g++ make pkg-config; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
pkg-config --exists grpc++ protobuf 2>/dev/null || missing+=("grpc++ and protobuf for pkg-config (libgrpc++-dev)")
for pkg in google.golang.org/grpc google.golang.org/protobuf google.golang.org/genproto/googleapis/rpc; do
  [ -d "/usr/share/gocode/src/$pkg" ] || missing+=("Go package $pkg in /usr/share/gocode")
done
# google/rpc/{status,error_details,code}.proto: from googleapis-common-protos (installed
# with grpcio-status); the TypeScript and C++ clients decode error details with them.
rpc_protos=$("$PY" -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(m.__file__))' 2>/dev/null)
[ -f "$rpc_protos/error_details.proto" ] || missing+=("googleapis-common-protos (pip, in $PY)")
if [ ${#missing[@]} -gt 0 ]; then
  reason="missing: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g') (./build.sh installs them as root; see protos/README.md)"
  for lang in $LANGS; do skip "$lang" "$reason"; done
  exit 0
fi

# 3. Stubs: genapi.v1 with buf (protos/buf.gen.yaml), google/rpc with protoc -------------
gen_fp=$(fingerprint protos/genapi/v1/*.proto protos/buf.gen.yaml "$rpc_protos"/{status,error_details,code}.proto \
  clients/ts/package-lock.json -- "$("$BUF" --version)" "$(protoc --version)" "$(protoc-gen-go --version)" \
  "$(protoc-gen-go-grpc --version)" "$(dpkg-query -W -f='${Version}' protobuf-compiler-grpc 2>/dev/null)")
if ! up_to_date gen "$gen_fp" clients/cpp/gen; then
  say "generating stubs (buf generate protos --template protos/buf.gen.yaml)"
  rm -rf clients/ts/src/gen clients/go/.gopath clients/cpp/gen "$OUT/googleapis"
  mkdir -p "$OUT/googleapis/google/rpc" clients/ts/src/gen clients/cpp/gen
  cp "$rpc_protos"/{status,error_details,code}.proto "$OUT/googleapis/google/rpc/"
  if ! "$BUF" generate protos --template protos/buf.gen.yaml \
    || ! protoc -I "$OUT/googleapis" --plugin=protoc-gen-ts_proto="$TS_PLUGIN" \
        --ts_proto_out=clients/ts/src/gen --ts_proto_opt=esModuleInterop=true,env=node \
        --cpp_out=clients/cpp/gen google/rpc/{status,error_details,code}.proto; then
    for lang in $LANGS; do skip "$lang" "stub generation failed (see the ./build.sh output)"; done
    exit 0
  fi
  built gen "$gen_fp"
fi

# 4. The example clients -----------------------------------------------------------------
# build LANG FP COMMAND...: runs COMMAND unless LANG is up to date for FP.
build() {
  local lang=$1 output=${BUILT[$1]} fp=$2; shift 2
  if up_to_date "$lang" "$fp" "$output"; then
    say "$lang: up to date"
    return
  fi
  local start=$SECONDS
  if "$@"; then
    built "$lang" "$fp"
    say "$lang: built $output in $((SECONDS - start))s"
  else
    skip "$lang" "build failed (see the ./build.sh output)"
  fi
}
build ts \
  "$(fingerprint clients/ts/src/example.ts clients/ts/tsconfig.json -- "$gen_fp" "$(node --version)")" \
  clients/ts/node_modules/.bin/tsc -p clients/ts
build go \
  "$(fingerprint clients/go/example/main.go -- "$gen_fp" "$(go version)")" \
  go build -o clients/go/build/example ./clients/go/example
build cpp \
  "$(fingerprint clients/cpp/example.cc clients/cpp/Makefile -- "$gen_fp" "$(g++ --version | head -1)" \
     "$(pkg-config --modversion grpc++)")" \
  make -C clients/cpp -s -j"$(nproc)"
exit 0
