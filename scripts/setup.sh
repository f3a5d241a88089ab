#!/usr/bin/env bash
# Installs and builds everything kvpark needs on a Debian machine with Node 20 and npm:
# Debian packages (BLAS/LAPACK for MLX, jemalloc for the engine process, protoc, gRPC Python, venv and wheel for the cross-language tests,
# xxhash for the SSD store; for the tests also Chromium, which the browser tests drive headless through
# playwright-core, and Redis, whose servers and cluster the shared-tier tests start), npm packages, the native addon and the TypeScript build.
# Idempotent and quick when nothing changed. `--test` adds what only the test suite needs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libopenblas0 liblapack3 libxxhash-dev libjemalloc2 g++ make python3)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(openssl protobuf-compiler protobuf-compiler-grpc libprotobuf-dev python3-grpcio python3-protobuf python3-venv python3-wheel chromium redis-server redis-tools)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "kvpark setup: installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "kvpark setup: run as root or install: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

# @frost-beta/mlx ships its Linux binary in the npm tarball, but its install script tries to download
# one and fails offline; scripts are skipped here and the project's own native code is built below.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "kvpark setup: installing npm packages"
  npm ci --ignore-scripts --no-audit --no-fund
fi

if [[ -f native/binding.gyp ]]; then
  addon=native/build/Release/kvpark_store.node
  if [[ ! -f $addon ]] || [[ -n $(find native -path native/build -prune -o -newer "$addon" -type f -print -quit) ]]; then
    echo "kvpark setup: building the native store"
    npm run --silent build:native >/dev/null
  fi
fi

# @frost-beta/mlx declares its nn/optimizers modules by their TypeScript sources, which do not compile
# under kvpark's strict settings. Declarations are emitted from them once, without strictness, and the
# compiler is pointed at those (tsconfig "paths"); at run time the package itself is loaded as usual.
types=node_modules/.kvpark-types/mlx
mlx=node_modules/@frost-beta/mlx
if [[ ! -f $types/lib/nn/index.d.ts || $mlx/package.json -nt $types/lib/nn/index.d.ts ]]; then
  rm -rf "$types" && mkdir -p "$types/lib"
  cp "$mlx/lib/index.d.ts" "$types/lib/"
  echo '{"name":"@frost-beta/mlx","types":"lib/index.d.ts"}' > "$types/package.json"
  npx tsc --declaration --emitDeclarationOnly --skipLibCheck --strict false --noImplicitAny false \
    --esModuleInterop --target es2022 --module commonjs --moduleResolution node --types node \
    --rootDir "$mlx/lib" --outDir "$types/lib" \
    "$mlx/lib/nn/index.ts" "$mlx/lib/optimizers/index.ts" "$mlx/lib/utils.ts" "$mlx/lib/stream.ts" >/dev/null || true
  test -f "$types/lib/nn/index.d.ts"
fi

# tsc, plus the data files it does not copy into dist/ (npm run build). `tsc -b --incremental` keeps
# its state in dist/tsconfig.tsbuildinfo and compiles only the files that changed and those that
# depend on them, nothing when no source did. It does not look at installed packages: new ones, or new
# MLX declarations, drop that state so that everything is compiled again. A clone without dist/
# compiles everything.
info=dist/tsconfig.tsbuildinfo
if [[ -f $info && (node_modules/.package-lock.json -nt $info || $types/lib/nn/index.d.ts -nt $info) ]]; then
  rm -f "$info"
fi
echo "kvpark setup: compiling TypeScript (what changed)"
npm run --silent build
