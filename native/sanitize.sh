#!/usr/bin/env bash
# Builds the pure C++ core with its test driver under sanitizers and runs it.
#   native/sanitize.sh            AddressSanitizer + UndefinedBehaviorSanitizer
#   native/sanitize.sh thread     ThreadSanitizer
# Needs g++ and libxxhash-dev; no Node.
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-address}"
case "$mode" in
  address) flags="-fsanitize=address,undefined -fno-sanitize-recover=all" ;;
  thread) flags="-fsanitize=thread" ;;
  *) echo "usage: $0 [address|thread]" >&2; exit 2 ;;
esac
out="build/sanitize-$mode"
mkdir -p "$out"
# shellcheck disable=SC2086
g++ -std=c++17 -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Werror $flags \
  src/store.cc test/core_test.cc -o "$out/core_test" -lxxhash -lpthread
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 TSAN_OPTIONS=halt_on_error=1 \
  "$out/core_test"
