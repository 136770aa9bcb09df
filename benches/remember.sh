#!/usr/bin/env bash
# Remember-table benchmark: `affinity = "ip"` with a [remember] table of N keys (default
# 1,000,000) vs the same pool without one, beside HAProxy with a stick table of the same keys
# (`stick on` the X-Forwarded-For address) and nginx `hash $http_x_forwarded_for consistent`
# (no table). All on 127.0.0.1; the client address is carried in X-Forwarded-For (trusted
# from loopback), so one wrk can stand for a million clients.
#
# 1. Fill: every key 10.a.b.c (N of them) is sent once through tether-remember and HAProxy;
#    resident memory before and after gives the table's cost per key.
# 2. Load: rounds of wrk with a random one of the N keys per request (every request a table
#    hit), against each proxy in turn; medians of req/s and p99, ratios vs HAProxy.
# Each proxy runs alone on CPU 0 with one thread; wrk and the nginx backends on CPU 1.
#   bash benches/remember.sh [keys] [rounds] [seconds]     (default 1000000 3 5)
#   NO_BUILD=1 bash benches/remember.sh …                 (use the existing release build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
ROUNDS=${2:-3}
SECS=${3:-5}
CONNS=${CONNS:-50}

source benches/lib.sh
require haproxy:haproxy nginx:nginx-light wrk:wrk
# NO_BUILD=1: measure the target/release/tether already built (skips cargo build).
[ "${NO_BUILD:-0}" = 1 ] && cargo() { :; }
setup

B1=19701; B2=19702; B3=19703; RP=19710; PP=19711; HP=19712; NP=19713; RA=19720
for p in $B1 $B2 $B3 $RP $PP $HP $NP $RA; do
  ! ss -ltn | grep -q ":$p " || { echo "port $p is taken (another benchmark running?)" >&2; exit 1; }
done
mkdir -p "$work/b/logs" "$work/n/logs"
cat > "$work/backends.conf" <<NGX
worker_processes 1; daemon off; pid $work/b.pid; error_log $work/b/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$B1; location / { return 200 "backend one\n"; } }
  server { listen 127.0.0.1:$B2; location / { return 200 "backend two\n"; } }
  server { listen 127.0.0.1:$B3; location / { return 200 "backend three\n"; } }
}
NGX
taskset -c 1 nginx -p "$work/b" -c "$work/backends.conf" & pids+=($!)

tether_conf() { # port remember(0/1) admin-port
  cat <<TOML
[listen]
http = ["127.0.0.1:$1"]
[log]
access = "off"
[proxy]
trusted_proxies = ["127.0.0.1/32"]
TOML
  [ "$3" != 0 ] && printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$3"
  printf '[pools.app]\naffinity = "ip"\n'
  [ "$2" = 1 ] && printf '[pools.app.remember]\nttl = "1h"\ncapacity = %s\n' "$((N * 12 / 10))"
  for i in 1 2 3; do
    b=B$i
    printf '[[pools.app.backends]]\nid = "s%s"\naddress = "127.0.0.1:%s"\n' "$i" "${!b}"
  done
}
tether_conf $RP 1 $RA > "$work/remember.toml"
tether_conf $PP 0 0 > "$work/plain.toml"
taskset -c 0 target/release/tether run -c "$work/remember.toml" --threads 1 2>"$work/remember.log" & pids+=($!)
REMEMBER=$!
taskset -c 0 target/release/tether run -c "$work/plain.toml" --threads 1 2>"$work/plain.log" & pids+=($!)
PLAIN=$!

{ haproxy_common; cat <<HAP
  http-reuse safe
frontend fe
  bind 127.0.0.1:$HP
  default_backend be
backend be
  balance roundrobin
  stick-table type ip size $((N * 12 / 10)) expire 1h
  stick on req.hdr_ip(X-Forwarded-For,-1)
  server s1 127.0.0.1:$B1
  server s2 127.0.0.1:$B2
  server s3 127.0.0.1:$B3
HAP
} > "$work/haproxy.cfg"
taskset -c 0 haproxy -f "$work/haproxy.cfg" & pids+=($!)
HAPROXY=$!

cat > "$work/nginx.conf" <<NGX
master_process off; worker_processes 1; daemon off; pid $work/n.pid; error_log $work/n/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  upstream pool {
    hash \$http_x_forwarded_for consistent;
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

# Key i (1..N) is the address 10.(i/65536).(i/256%256).(i%256).
cat > "$work/fill.lua" <<LUA
local n, i = $N, 0
init = function(args) i = tonumber(args[1] or "0") end
request = function()
  i = i + 1
  local k = (i - 1) % n + 1
  return wrk.format("GET", "/", {["X-Forwarded-For"] = string.format("10.%d.%d.%d",
    math.floor(k / 65536), math.floor(k / 256) % 256, k % 256)})
end
LUA
cat > "$work/random.lua" <<LUA
local n = $N
math.randomseed(7)
request = function()
  local k = math.random(n)
  return wrk.format("GET", "/", {["X-Forwarded-For"] = string.format("10.%d.%d.%d",
    math.floor(k / 65536), math.floor(k / 256) % 256, k % 256)})
end
LUA

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
entries() { curl -s "http://127.0.0.1:$RA/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pools"]["app"]["remember"]["entries"])'; }

# Warm both up (connection pools, allocator) before the "before" reading.
for p in $RP $HP; do taskset -c 1 wrk -t1 -c10 -d1s -H "X-Forwarded-For: 192.0.2.1" "http://127.0.0.1:$p/" >/dev/null; done
sleep 0.5
R0=$(rss $REMEMBER); H0=$(rss $HAPROXY); P0=$(rss $PLAIN)

# One pass over the N keys through each table-keeping proxy: wrk runs of 10 s, each starting
# at the key after the last one the previous run completed, until all N were sent.
fill() { # port
  local off=0 n
  while [ "$off" -lt "$N" ]; do
    n=$(taskset -c 1 wrk -t1 -c"$CONNS" -d10s -s "$work/fill.lua" "http://127.0.0.1:$1/" -- "$off" | awk '/requests in/ {print $1}')
    off=$((off + n))
  done
}
fill $RP
fill $HP
sleep 1
R1=$(rss $REMEMBER); H1=$(rss $HAPROXY); P1=$(rss $PLAIN)
RENT=$(entries)

run() { # name pid port -> one result line
  local t0 t1 out
  t0=$(cpu_ticks "$2")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$work/random.lua" "http://127.0.0.1:$3/")
  t1=$(cpu_ticks "$2")
  local rps p99 reqs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$1 $rps $p99 $(( (t1 - t0) * 1000000 / HZ )) $reqs"
}

echo "round proxy req/s p99 cpu_us requests" > "$work/results"
for r in $(seq 1 "$ROUNDS"); do
  for p in remember plain haproxy nginx; do
    case $p in
      remember) line=$(run remember $REMEMBER $RP) ;;
      plain) line=$(run plain $PLAIN $PP) ;;
      haproxy) line=$(run haproxy $HAPROXY $HP) ;;
      nginx) line=$(run nginx $NGINX $NP) ;;
    esac
    echo "$r $line" | tee -a "$work/results"
  done
done
R2=$(rss $REMEMBER)

python3 - "$work/results" "$N" "$RENT" "$R0" "$R1" "$R2" "$H0" "$H1" "$P0" "$P1" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
n, entries = int(sys.argv[2]), int(sys.argv[3])
r0, r1, r2, h0, h1, p0, p1 = (int(x) for x in sys.argv[4:11])
def ms(v):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
def med(p, f):
    return statistics.median(f(r) for r in rows if r[1] == p)
base = {"rps": med("haproxy", lambda r: float(r[2])), "p99": med("haproxy", lambda r: ms(r[3]))}
print(f"\n{n:,} keys, every request a random one of them (a table hit)\n")
print("| proxy | req/s | p99 ms | CPU µs/req | req/s vs HAProxy | p99 vs HAProxy |")
print("|---|---|---|---|---|---|")
names = {"remember": "tether, ip + remember", "plain": "tether, ip (no table)",
         "haproxy": "HAProxy, stick table", "nginx": "nginx, hash consistent"}
for p in ("remember", "plain", "haproxy", "nginx"):
    rps = med(p, lambda r: float(r[2]))
    p99 = med(p, lambda r: ms(r[3]))
    cpu = med(p, lambda r: float(r[4]) / float(r[5]))
    print(f"| {names[p]} | {rps:,.0f} | {p99:.2f} | {cpu:.1f} | {rps / base['rps']:.2f} | {p99 / base['p99']:.2f} |")
print(f"\n| memory (RSS) | before fill | after {n:,} keys | per key |")
print("|---|---|---|---|")
print(f"| tether, ip + remember ({entries:,} entries) | {r0 / 1024:.0f} MiB | {r1 / 1024:.0f} MiB (after load: {r2 / 1024:.0f} MiB) | {(r1 - r0) * 1024 / entries:.0f} B |")
print(f"| tether, ip (no table; saw no fill traffic) | {p0 / 1024:.0f} MiB | {p1 / 1024:.0f} MiB | — |")
print(f"| HAProxy, stick table (all {n:,} keys sent) | {h0 / 1024:.0f} MiB | {h1 / 1024:.0f} MiB | {(h1 - h0) * 1024 / n:.0f} B |")
PY
