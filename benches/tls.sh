#!/usr/bin/env bash
# TLS benchmark: full TLS handshakes per second and HTTP/2-over-TLS requests per second,
# through tether and through HAProxy, on this machine, side by side.
#
# Each proxy runs alone with one worker thread pinned to CPU 0; the load generators and the
# backend (nginx answering a fixed 200) run on CPU 1. Rounds are interleaved. Everything is
# on 127.0.0.1. Needs: haproxy, nginx, openssl, h2load (installed if missing, Debian).
#   bash benches/tls.sh [rounds]        (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${SECS:-5}

source benches/lib.sh
require haproxy:haproxy nginx:nginx-light h2load:nghttp2-client openssl:openssl
setup

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"

B=18301; T=18443; H=18444
mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx/logs/error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$B; location / { return 200 "ok\n"; } } }
NGX
taskset -c 1 nginx -p "$work/nginx" -c "$work/nginx.conf" & pids+=($!)

cat > "$work/tether.toml" <<TOML
[listen]
https = ["127.0.0.1:$T"]
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[log]
access = "off"
[pools.app]
affinity = "cookie"
[[pools.app.backends]]
id = "s1"
address = "127.0.0.1:$B"
TOML
taskset -c 0 target/release/tether run -c "$work/tether.toml" --threads 1 2>"$work/tether.log" & pids+=($!)
TETHER_PID=$!

{ haproxy_common; cat <<HAP
frontend fe
  bind 127.0.0.1:$H ssl crt $work/haproxy.pem alpn h2,http/1.1
  default_backend be
backend be
  cookie SRV insert indirect nocache
  server s1 127.0.0.1:$B cookie s1
HAP
} > "$work/haproxy.cfg"
taskset -c 0 haproxy -f "$work/haproxy.cfg" & pids+=($!)
HAPROXY_PID=$!
sleep 1.5


handshakes() { # port -> connections per second (full handshakes, one client)
  taskset -c 1 openssl s_time -connect "127.0.0.1:$1" -new -time "$SECS" 2>/dev/null \
    | awk '/connections in [0-9.]+ real seconds/ { printf "%.0f", $1 / $4 }'
}
h2() { # port -> requests per second
  taskset -c 1 h2load -n 60000 -c 16 -m 10 "https://127.0.0.1:$1/" 2>/dev/null | awk '/finished in/ { print $4 }'
}
measure() { # name pid port
  local t0 hs t1 t2 rps t3
  t0=$(cpu_ticks "$2"); hs=$(handshakes "$3"); t1=$(cpu_ticks "$2")
  t2=$(cpu_ticks "$2"); rps=$(h2 "$3"); t3=$(cpu_ticks "$2")
  echo "$1 $hs $(( (t1 - t0) * 1000000 / HZ )) $rps $(( (t3 - t2) * 1000000 / HZ ))"
}

echo "round proxy handshakes/s cpu_us(hs) h2_req/s cpu_us(h2, 60000 req)" | tee "$work/results"
for r in $(seq 1 "$ROUNDS"); do
  for p in tether haproxy; do
    if [ $p = tether ]; then line=$(measure tether $TETHER_PID $T); else line=$(measure haproxy $HAPROXY_PID $H); fi
    echo "$r $line" | tee -a "$work/results"
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
def med(proxy, col):
    return statistics.median(float(r[col]) for r in rows if r[1] == proxy)
t_hs, h_hs = med("tether", 2), med("haproxy", 2)
t_rps, h_rps = med("tether", 4), med("haproxy", 4)
t_cpu, h_cpu = med("tether", 5) / 60000, med("haproxy", 5) / 60000
print()
print("| median of rounds | tether | HAProxy | tether / HAProxy |")
print("|---|---|---|---|")
print(f"| TLS handshakes/s (new session each, 1 client) | {t_hs:.0f} | {h_hs:.0f} | {t_hs / h_hs:.2f} |")
print(f"| h2 requests/s (16 conns x 10 streams) | {t_rps:.0f} | {h_rps:.0f} | {t_rps / h_rps:.2f} |")
print(f"| proxy CPU per h2 request (µs) | {t_cpu:.1f} | {h_cpu:.1f} | {t_cpu / h_cpu:.2f} |")
PY
