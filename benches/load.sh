#!/usr/bin/env bash
# Load benchmark: tether vs HAProxy vs nginx, side by side on this machine.
#
# Three nginx backends answer a fixed 200. Each proxy runs alone, one worker thread, pinned
# to CPU 0; wrk and the backends run on CPU 1. Two workloads:
#   cookie    — every request carries a valid affinity cookie (a returning user)
#   new       — no cookie: every request is a new session (the proxy places it and, for
#               tether and HAProxy, inserts a cookie)
# plus a direct-to-backend run (the rig's ceiling) and the rig's floor: `examples/relay.rs`, a
# TCP relay with no HTTP in it (one recv and one send per message, nothing else), whose CPU
# per request is what the kernel alone costs — no HTTP proxy can spend less. Rounds are interleaved; the report gives
# medians of req/s, p50/p99 latency and the proxy's CPU microseconds per request (from
# /proc/PID/stat), and ratios against HAProxy. Everything stays on 127.0.0.1.
#   bash benches/load.sh [rounds] [seconds]      (default 3 rounds of 5 s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
CONNS=${CONNS:-50}

source benches/lib.sh
require haproxy:haproxy nginx:nginx-light wrk:wrk
setup

B1=18401; B2=18402; B3=18403; TP=18410; HP=18411; NP=18412; RP=18413
cargo build --release -q --example relay
mkdir -p "$work/n/logs"
rig_configs $B1 $B2 $B3 $TP $HP
taskset -c 1 nginx -p "$work/b" -c "$work/backends.conf" & pids+=($!)

taskset -c 0 target/release/tether run -c "$work/tether.toml" --threads 1 2>"$work/tether.log" & pids+=($!)
TETHER=$!

taskset -c 0 target/release/examples/relay 127.0.0.1:$RP 127.0.0.1:$B1 127.0.0.1:$B2 127.0.0.1:$B3 & pids+=($!)
RELAY=$!

taskset -c 0 haproxy -f "$work/haproxy.cfg" & pids+=($!)
HAPROXY=$!

cat > "$work/nginx.conf" <<NGX
master_process off; worker_processes 1; daemon off; pid $work/n.pid; error_log $work/n/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  upstream pool {
    hash \$cookie_SRV\$remote_addr consistent;
    server 127.0.0.1:$B1; server 127.0.0.1:$B2; server 127.0.0.1:$B3;
    keepalive 64;
  }
  server { listen 127.0.0.1:$NP; location / {
    proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection "";
  } }
}
NGX
taskset -c 0 nginx -p "$work/n" -c "$work/nginx.conf" & pids+=($!)
sleep 1.5
NGINX=$(cat "$work/n.pid")

# A valid cookie for each proxy (a returning user).
TCOOKIE=$(curl -s -D - -o /dev/null "http://127.0.0.1:$TP/" | awk -F'[ ;]' 'tolower($1)=="set-cookie:" && $2 ~ /^TETHER=/ {print $2}')
[ -n "$TCOOKIE" ] || { echo "tether did not set a cookie" >&2; exit 1; }


run() { # name pid port cookie-header -> one result line
  local args=(-t1 -c"$CONNS" -d"${SECS}s" --latency)
  [ -n "$4" ] && args+=(-H "Cookie: $4")
  local t0 t1 out
  t0=$( [ "$2" = - ] && echo 0 || cpu_ticks "$2")
  out=$(taskset -c 1 wrk "${args[@]}" "http://127.0.0.1:$3/")
  t1=$( [ "$2" = - ] && echo 0 || cpu_ticks "$2")
  local rps p50 p99 reqs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local cpu_us=$(( (t1 - t0) * 1000000 / HZ ))
  echo "$1 $rps $p50 $p99 $cpu_us $reqs"
}

echo "round workload proxy req/s p50 p99 cpu_us requests" > "$work/results"
for r in $(seq 1 "$ROUNDS"); do
  echo "$r direct $(run direct - $B1 '')" | tee -a "$work/results"
  for w in cookie new; do
    for p in tether haproxy nginx relay; do
      case "$p/$w" in
        tether/cookie) line=$(run tether $TETHER $TP "$TCOOKIE") ;;
        tether/new) line=$(run tether $TETHER $TP "") ;;
        haproxy/cookie) line=$(run haproxy $HAPROXY $HP "SRV=s2") ;;
        haproxy/new) line=$(run haproxy $HAPROXY $HP "") ;;
        nginx/cookie) line=$(run nginx $NGINX $NP "SRV=s2") ;;
        nginx/new) line=$(run nginx $NGINX $NP "") ;;
        relay/cookie) line=$(run relay $RELAY $RP "SRV=s2") ;;
        relay/new) line=$(run relay $RELAY $RP "") ;;
      esac
      echo "$r $w $line" | tee -a "$work/results"
    done
  done
done

python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
def ms(v):
    v = v.strip()
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
def med(w, p, f):
    vals = [f(r) for r in rows if r[1] == w and r[2] == p]
    return statistics.median(vals) if vals else float("nan")
direct = med("direct", "direct", lambda r: float(r[3]))
print(f"\nDirect to one backend (rig ceiling): {direct:,.0f} req/s\n")
print("| workload | proxy | req/s | p50 ms | p99 ms | CPU µs/req | req/s vs HAProxy | CPU vs HAProxy | p99 vs HAProxy |")
print("|---|---|---|---|---|---|---|---|---|")
for w in ("cookie", "new"):
    base = {k: med(w, "haproxy", f) for k, f in (
        ("rps", lambda r: float(r[3])), ("p99", lambda r: ms(r[5])), ("cpu", lambda r: float(r[6]) / float(r[7])))}
    for p in ("tether", "haproxy", "nginx", "relay"):
        rps = med(w, p, lambda r: float(r[3]))
        p50 = med(w, p, lambda r: ms(r[4]))
        p99 = med(w, p, lambda r: ms(r[5]))
        cpu = med(w, p, lambda r: float(r[6]) / float(r[7]))
        print(f"| {w} | {p} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {rps / base['rps']:.2f} | {cpu / base['cpu']:.2f} | {p99 / base['p99']:.2f} |")
print("\nrelay: the floor — a TCP relay with no HTTP work; CPU vs HAProxy is the least any proxy could reach here.")
PY
