# Shared setup for the benchmark scripts (sourced, not run): tools, the release build, a
# work directory whose started processes are stopped on exit, and process CPU time.

# require CMD:DEBIAN-PACKAGE ... — installs the packages of the commands that are missing.
require() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# Builds tether, raises the fd limit, and makes $work; add started pids to the pids array.
setup() {
  cargo build --release -q --bin tether
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  work=$(mktemp -d)
  pids=()
  trap cleanup EXIT
}

cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$work"
}

# User + system CPU time of a process, in clock ticks (HZ per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
