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

# rig_configs B1 B2 B3 TETHER-PORT HAPROXY-PORT — the load rig shared by load.sh and
# callgrind.sh: $work/backends.conf (three nginx servers answering a fixed 200),
# $work/tether.toml (a cookie pool over them) and $work/haproxy.cfg (cookie insert, one
# thread).
rig_configs() {
  local b1=$1 b2=$2 b3=$3 tp=$4 hp=$5
  mkdir -p "$work/b/logs"
  cat > "$work/backends.conf" <<NGX
worker_processes 1; daemon off; pid $work/b.pid; error_log $work/b/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$b1; location / { return 200 "backend one\n"; } }
  server { listen 127.0.0.1:$b2; location / { return 200 "backend two\n"; } }
  server { listen 127.0.0.1:$b3; location / { return 200 "backend three\n"; } }
}
NGX
  cat > "$work/tether.toml" <<TOML
[listen]
http = ["127.0.0.1:$tp"]
[log]
access = "off"
[pools.app]
affinity = "cookie"
[[pools.app.backends]]
id = "s1"
address = "127.0.0.1:$b1"
[[pools.app.backends]]
id = "s2"
address = "127.0.0.1:$b2"
[[pools.app.backends]]
id = "s3"
address = "127.0.0.1:$b3"
TOML
  { haproxy_common; cat <<HAP
  http-reuse safe
frontend fe
  bind 127.0.0.1:$hp
  default_backend be
backend be
  balance roundrobin
  cookie SRV insert indirect nocache
  server s1 127.0.0.1:$b1 cookie s1
  server s2 127.0.0.1:$b2 cookie s2
  server s3 127.0.0.1:$b3 cookie s3
HAP
  } > "$work/haproxy.cfg"
}

# The global and defaults sections every benchmark's HAProxy shares: one thread, HTTP mode.
haproxy_common() {
  cat <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
HAP
}
