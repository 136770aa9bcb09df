#!/usr/bin/env bash
# Memory benchmark: tether's resident memory when idle, and with 10,000 idle keep-alive
# client connections (each has made one request). All on 127.0.0.1.
#   bash benches/memory.sh [connections]     (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
source benches/lib.sh
require nginx:nginx-light
setup

B=18501; P=18510
mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<NGX
master_process off; worker_processes 1; daemon off; pid $work/n.pid; error_log $work/logs/error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$B; location / { return 200 "ok\n"; } } }
NGX
nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
cat > "$work/tether.toml" <<TOML
[listen]
http = ["127.0.0.1:$P"]
[log]
access = "off"
[proxy]
idle_timeout = "300s"
header_timeout = "300s"
[pools.app]
[[pools.app.backends]]
address = "127.0.0.1:$B"
TOML
target/release/tether run -c "$work/tether.toml" --threads 1 2>"$work/tether.log" & pids+=($!)
T=$!
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
curl -s "http://127.0.0.1:$P/" >/dev/null
sleep 0.5
IDLE=$(rss $T)

python3 - "$P" "$N" "$T" <<'PY' &
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.{i // 65536}.{i // 256 % 256}.{i % 256}\r\n\r\n".encode())
    await w.drain()
    await r.readuntil(b"ok\n")
    conns.append((r, w))
async def main():
    conns = []
    sem = asyncio.Semaphore(500)
    async def guarded(i):
        async with sem:
            await one(i, conns)
    await asyncio.gather(*(guarded(i) for i in range(n)))
    print(f"{len(conns)} connections open", flush=True)
    await asyncio.sleep(30)
asyncio.run(main())
PY
CLIENT=$!; pids+=($CLIENT)
for _ in $(seq 1 120); do
  sleep 0.5
  open=$(ls /proc/$T/fd | wc -l)
  [ "$open" -ge "$N" ] && break
done
sleep 2
BUSY=$(rss $T)
OPEN=$(ls /proc/$T/fd | wc -l)
echo
echo "| tether | RSS |"
echo "|---|---|"
echo "| idle (after one request) | $((IDLE / 1024)) MiB |"
echo "| with $N idle keep-alive client connections ($OPEN fds open) | $((BUSY / 1024)) MiB |"
