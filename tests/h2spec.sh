#!/usr/bin/env bash
# HTTP/2 conformance: runs h2spec (the full suite) against tether on loopback, over h2c
# (prior knowledge) and over TLS with ALPN h2. tether serves HTTP/2 with hyper's
# HTTP/2-only server; a failure here is a conformance regression.
#   usage: tests/h2spec.sh            (h2spec from $H2SPEC, else target/h2spec, built
#                                      by ../shared/tools/h2spec/build.sh if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
h2spec=${H2SPEC:-target/h2spec}
if [ ! -x "$h2spec" ]; then
  # The shared tools (beside the checkout, as CI lays them out) build it offline from
  # Debian's Go packages.
  bash ../shared/tools/h2spec/build.sh "$h2spec"
fi
cargo build --quiet --bin tether
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend=$(free_port); http=$(free_port); https=$(free_port)

# A loopback backend for the requests h2spec makes.
python3 -m http.server "$backend" --bind 127.0.0.1 --directory "$dir" >/dev/null 2>&1 &
pids+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
cat > "$dir/tether.toml" <<TOML
[listen]
http = ["127.0.0.1:$http"]
https = ["127.0.0.1:$https"]
[tls]
cert = "cert.pem"
key = "key.pem"
[log]
access = "off"
[pools.app]
[[pools.app.backends]]
id = "a"
address = "127.0.0.1:$backend"
TOML
target/debug/tether run -c "$dir/tether.toml" >"$dir/tether.log" 2>&1 &
pids+=($!)
for port in "$backend" "$https"; do
  for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

status=0
echo "== h2spec, h2c (prior knowledge)"
"$h2spec" -h 127.0.0.1 -p "$http" -o 5 || status=1
echo "== h2spec, TLS with ALPN h2"
"$h2spec" -h 127.0.0.1 -p "$https" -t -k -o 5 || status=1
if [ $status -ne 0 ]; then tail -20 "$dir/tether.log"; fi
exit $status
