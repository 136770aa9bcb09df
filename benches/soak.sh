#!/usr/bin/env bash
# Soak test: steady cookie-session load for DURATION seconds (default 600) while the config
# is reloaded every 5 s and one of three backends is killed (SIGKILL) every 30 s and
# restarted 5 s later. Samples tether's RSS and open file descriptors every 10 s and reports:
# total requests, failed requests outside the kill windows (must be 0), sessions moved off
# backends that were up (must be 0), RSS growth after warm-up (must be < 10 %), and whether
# the fd count is back to its baseline at the end. Bounded; all on 127.0.0.1.
#   bash benches/soak.sh [duration-seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
source benches/lib.sh
require nginx:nginx-light
cargo build --release -q --bin tether
exec python3 benches/soak.py "$DURATION"
