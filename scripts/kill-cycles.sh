#!/usr/bin/env bash
# The kill -9 test of test/service/kill.test.ts, run for longer: N cycles (default 200) of SIGKILL to
# the front end (and to the engine on every other cycle) under write load, each restarting at once on
# the same data directory and checking every prompt reported persisted.
# Usage: bash scripts/kill-cycles.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build
KVPARK_KILL_CYCLES="${1:-200}" npx jest --runInBand --testTimeout=0 test/service/kill.test.ts
