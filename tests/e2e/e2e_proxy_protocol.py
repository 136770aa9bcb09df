#!/usr/bin/env python3
"""End to end: tether behind a real HAProxy in TCP mode sending the PROXY protocol.

HAProxy (mode tcp, `send-proxy-v2`, then a second run with `send-proxy`) forwards to a tether
with `proxy_protocol = true` and `ip` affinity over three small HTTP backends. 40 clients,
each from its own loopback source address (127.0.0.2 ... 127.0.0.41, bound on the client
socket), must reach the backend they reach when talking to a tether without the LB, and
each backend must see the client's own address at the end of X-Forwarded-For.

Everything listens on 127.0.0.1. Run by tests/e2e/run.sh (which installs haproxy).
Prints one line per check and ends with "N passed, M failed"; exits non-zero on failure.
"""
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target", "debug", "tether"))
WORK = tempfile.mkdtemp(prefix="tether-e2e-pp-")
PROCS = []
RESULTS = []
CLIENTS = [f"127.0.0.{i}" for i in range(2, 42)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(name, cmd):
    log = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.name = name
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers with its backend name and the X-Forwarded-For it received."""

    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("X-Backend", self.server.name)
        self.send_header("X-Seen-XFF", self.headers.get("X-Forwarded-For", ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_backend(name):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    srv.name = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def tether(name, port, backends, proxy_protocol):
    lines = [
        "[listen]", f'http = ["127.0.0.1:{port}"]',
        f"proxy_protocol = {'true' if proxy_protocol else 'false'}",
        "[log]", 'access = "off"',
        "[proxy]", 'trusted_proxies = ["127.0.0.1/32"]', 'header_timeout = "2s"',
        "[pools.app]", 'affinity = "ip"',
    ]
    for b in backends:
        lines += ["[[pools.app.backends]]", f'id = "{b.name}"',
                  f'address = "127.0.0.1:{b.server_address[1]}"']
    path = os.path.join(WORK, name + ".toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = start(name, [TETHER, "run", "-c", path])
    wait_port(port)
    return p


def haproxy(name, port, target, send):
    cfg = os.path.join(WORK, name + ".cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server t 127.0.0.1:{target} {send}
""")
    p = start(name, ["haproxy", "-db", "-f", cfg])
    wait_port(port)
    return p


def get_from(source, port):
    """One GET from `source` (bound as the socket's source address); (backend, xff)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise AssertionError(f"{source}: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return headers.get("x-backend"), headers.get("x-seen-xff", "")


def check(name, fn):
    try:
        fn()
        RESULTS.append((name, True, ""))
        print(f"PASS {name}")
    except Exception as e:  # report and go on
        RESULTS.append((name, False, str(e)))
        print(f"FAIL {name}: {e}")


def main():
    if not os.path.exists(TETHER):
        print(f"no tether binary at {TETHER}")
        return 1
    backends = [start_backend(n) for n in ("b1", "b2", "b3")]
    direct_port, pp_port = free_port(), free_port()
    tether("tether-direct", direct_port, backends, False)
    tether("tether-pp", pp_port, backends, True)
    # Without the LB: each source address straight to tether.
    direct = {c: get_from(c, direct_port)[0] for c in CLIENTS}

    def behind(send):
        def run():
            port = free_port()
            lb = haproxy("haproxy-" + send, port, pp_port, send)
            try:
                for c in CLIENTS:
                    backend, xff = get_from(c, port)
                    if backend != direct[c]:
                        raise AssertionError(f"{c} reached {backend}, without the LB {direct[c]}")
                    last = xff.split(",")[-1].strip()
                    if last != c:
                        raise AssertionError(f"{c}: backend saw X-Forwarded-For {xff!r}")
            finally:
                stop(lb)
        return run

    def spread():
        used = set(direct.values())
        if len(used) < 2:
            raise AssertionError(f"40 addresses all mapped to {used}: ip affinity is not in play")

    check("40 source addresses spread over the pool without the LB", spread)
    check("haproxy send-proxy-v2: same backends, real address in X-Forwarded-For",
          behind("send-proxy-v2"))
    check("haproxy send-proxy (v1): same backends, real address in X-Forwarded-For",
          behind("send-proxy"))

    def plain_is_refused():
        # A client that skips the LB and speaks HTTP straight to the PROXY listener.
        with socket.create_connection(("127.0.0.1", pp_port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: e2e\r\n\r\n")
            try:
                data = s.recv(1024)
            except ConnectionResetError:
                data = b""
        if data:
            raise AssertionError(f"answered {data[:40]!r}")

    check("a connection without a PROXY header is closed without an answer", plain_is_refused)

    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        for p in PROCS:
            stop(p)
        shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(code)
