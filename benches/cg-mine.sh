#!/usr/bin/env bash
# User-space instructions per proxied request, tether vs HAProxy, counted by valgrind's
# callgrind: stable on a noisy machine where wall-clock CPU time is not. Same rig as
# load.sh (three nginx backends, one proxy worker, wrk with 20 connections); each proxy
# runs under callgrind, is warmed up, its counters are zeroed, wrk runs for SECS, and the
# instructions counted are divided by the requests served. Kernel work is not counted.
#   bash benches/callgrind.sh [seconds]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}; ONLY_TETHER=1
source benches/lib.sh
require haproxy:haproxy nginx:nginx-light wrk:wrk valgrind:valgrind
setup

B1=18701; B2=18702; B3=18703; TP=18710; HP=18711
rig_configs $B1 $B2 $B3 $TP $HP
nginx -p "$work/b" -c "$work/backends.conf" & pids+=($!)

# measure NAME PORT COOKIE-HEADER CMD... -> "NAME instructions/request"
measure() {
  local name=$1 port=$2 cookie=$3; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$name.%p" "$@" >/dev/null 2>&1 &
  local vg=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  [ "$cookie" = tether ] && cookie="Cookie: $(curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | awk -F'[ ;]' 'tolower($1)=="set-cookie:" && $2 ~ /^TETHER=/ {print $2}')"
  local args=(-t1 -c20)
  [ -n "$cookie" ] && args+=(-H "$cookie")
  wrk "${args[@]}" -d2s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  local out reqs ir file
  out=$(wrk "${args[@]}" -d"${SECS}s" "http://127.0.0.1:$port/")
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 0.5
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  file=$(ls -t "$work"/cg."$name".* | head -1)
  ir=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  mkdir -p /tmp/cgout && cp "$file" /tmp/cgout/$name.cg && echo "$reqs" > /tmp/cgout/$name.reqs
  echo "$name $((ir / reqs))"
}

{
  measure tether-cookie $TP tether ${BIN:-target/release/tether} run -c "$work/tether.toml" --threads 1
} | tee "$work/results"
