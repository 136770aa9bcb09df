#!/usr/bin/env bash
# Burst benchmark for max_conns: 200 clients arrive at once (5 requests each, keep-alive)
# at three backends that each serve 4 requests at a time, 50 ms per request, with a backlog
# of 8 beyond which they answer 503 at once (benches/burst.py; an overloaded app server).
# Three proxies in turn, each alone, one worker thread:
#   tether without max_conns, tether with max_conns = 4 (queue_timeout 10s), and HAProxy
#   with `maxconn 4` on each server (timeout queue 10s).
# tether uses affinity = "none" (least in-flight) and HAProxy leastconn: the same spreading,
# so the runs differ only in the limit. Reports errors (non-200 answers, resets, timeouts)
# and latency percentiles per run. Everything stays on 127.0.0.1; each run is bounded.
#   bash benches/queue.sh [rounds]      (default 3; the median round by p99 is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CONNS=${CONNS:-200}
PER=${PER:-5}

source benches/lib.sh
require haproxy:haproxy python3:python3
setup

B1=18701; B2=18702; B3=18703; TP=18710; TQ=18711; HP=18712
for p in $B1 $B2 $B3; do
  python3 benches/burst.py backend $p & pids+=($!)
done

tether_cfg() { # PORT MAX_CONNS
  cat <<TOML
[listen]
http = ["127.0.0.1:$1"]
[log]
access = "off"
[pools.app]
affinity = "none"
max_conns = $2
queue_timeout = "10s"
[[pools.app.backends]]
id = "s1"
address = "127.0.0.1:$B1"
[[pools.app.backends]]
id = "s2"
address = "127.0.0.1:$B2"
[[pools.app.backends]]
id = "s3"
address = "127.0.0.1:$B3"
TOML
}
tether_cfg $TP 0 > "$work/plain.toml"
tether_cfg $TQ 4 > "$work/queue.toml"
{ haproxy_common; cat <<HAP
  timeout queue 10s
  http-reuse safe
frontend fe
  bind 127.0.0.1:$HP
  default_backend be
backend be
  balance leastconn
  server s1 127.0.0.1:$B1 maxconn 4
  server s2 127.0.0.1:$B2 maxconn 4
  server s3 127.0.0.1:$B3 maxconn 4
HAP
} > "$work/haproxy.cfg"

target/release/tether run -c "$work/plain.toml" --threads 1 2>"$work/plain.log" & pids+=($!)
target/release/tether run -c "$work/queue.toml" --threads 1 2>"$work/queue.log" & pids+=($!)
haproxy -f "$work/haproxy.cfg" & pids+=($!)
for p in $B1 $B2 $B3 $TP $TQ $HP; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

for r in $(seq 1 "$ROUNDS"); do
  for run in "tether-no-limit $TP" "tether-max_conns-4 $TQ" "haproxy-maxconn-4 $HP"; do
    set -- $run
    echo "$1 $(timeout 120 python3 benches/burst.py client "$2" "$CONNS" "$PER")" | tee -a "$work/results"
    sleep 1
  done
done

python3 - "$work/results" "$CONNS" "$PER" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    name, _, js = line.partition(" ")
    runs.setdefault(name, []).append(json.loads(js))
print(f"\n{sys.argv[2]} clients at once x {sys.argv[3]} requests; backends: 4 at a time, 50 ms, backlog 8")
print("| proxy | requests | errors | p50 ms | p99 ms | max ms | wall s |")
print("|---|---|---|---|---|---|---|")
for name, rs in runs.items():
    rs.sort(key=lambda r: r["p99_ms"] or 0)
    m = rs[len(rs) // 2]
    errs = "/".join(str(r["errors"]) for r in rs)
    print(f"| {name} | {m['requests']} | {errs} | {m['p50_ms']} | {m['p99_ms']} | {m['max_ms']} | {m['wall_s']} |")
print("(errors: every round; latencies: the median round by p99)")
PY
