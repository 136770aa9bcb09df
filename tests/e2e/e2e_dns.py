#!/usr/bin/env python3
"""End-to-end tests of dynamic pools against a real DNS server, all on loopback.

dnsmasq runs in the foreground on a loopback port and answers from a hosts file it re-reads
on SIGHUP (A records) plus SRV records from its config file. Backends are small Python HTTP
servers on 127.0.0.2 .. 127.0.0.5 (all loopback). Two tether instances discover the same
names. Checks:

- a pool built from A records, another from SRV records (ids, routes, weights, source);
- a record added: a backend that new sessions reach, no existing session moves, and its
  share of new sessions rises over the slow-start window;
- a record removed: its pinned sessions stay on it, no new session lands there, and
  `tether ctl wait-drained` (both instances) returns only after they stop;
- dnsmasq stopped: nothing changes, 0 failed requests, the error shows in /status;
- `tether check` resolves the names once and prints them.

Run by tests/e2e/run.sh. Prints one line per check and "N passed, M failed".
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target", "debug", "tether"))
WORK = tempfile.mkdtemp(prefix="tether-e2e-dns-")
PROCS = []
RESULTS = []
DOMAIN = "tether.test"


# ---- plumbing ------------------------------------------------------------------------------

def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free_on_all(hosts):
    """A TCP port free on every one of `hosts`."""
    for _ in range(100):
        port = free_port(hosts[0])
        ok = True
        for h in hosts:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no common free port")


def udp_free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP+TCP port")


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


def kill(p, sig=signal.SIGKILL):
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def check(name, fn):
    try:
        fn()
        RESULTS.append((name, None))
        print(f"ok    {name}", flush=True)
    except Exception as e:  # a failed check is reported, the others still run
        RESULTS.append((name, e))
        print(f"FAIL  {name}: {e!r}", flush=True)


def wait_for(what, cond, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- backends: one HTTP server per loopback address, all on the same port ----------------

class Named(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("X-Backend", self.server.name)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Quiet(ThreadingHTTPServer):
    # Health checks hang up after the status line: not an error worth a traceback.
    def handle_error(self, request, client_address):
        pass


def serve(host, port, name):
    srv = Quiet((host, port), Named)
    srv.daemon_threads = True
    srv.name = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---- a client with a cookie and a client IP --------------------------------------------------

class Session:
    def __init__(self, ip):
        self.ip = ip
        self.cookie = None

    def get(self, port, host="app.local"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Host": host, "X-Forwarded-For": self.ip}
        if self.cookie:
            headers["Cookie"] = f"TETHER={self.cookie}"
        c.request("GET", "/", headers=headers)
        r = c.getresponse()
        r.read()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie" and v.startswith("TETHER="):
                self.cookie = v.split(";")[0][len("TETHER="):]
        c.close()
        return r.status, r.getheader("X-Backend")


def status(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    c.request("GET", "/status")
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    return doc


def backends(admin, pool):
    return {b["id"]: b for b in status(admin)["pools"][pool]["backends"]}


def new_share(port, prefix, n, name):
    """Share of `n` new sessions (client IPs prefix.0.1 …) that land on backend `name`."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda i: Session(f"{prefix}.{i // 200}.{i % 200 + 1}").get(port),
                            range(n)))
    assert all(s == 200 for s, _ in got), [s for s, _ in got if s != 200][:5]
    return sum(1 for _, b in got if b == name) / n, [b for _, b in got]


# ---- the suite -------------------------------------------------------------------------------

def main():
    if not os.path.exists(TETHER):
        print(f"missing {TETHER}: cargo build first", file=sys.stderr)
        return 2
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    hosts = [f"127.0.0.{i}" for i in range(2, 6)]
    port = port_free_on_all(hosts)
    srv_ports = [free_port(), free_port()]
    servers = [serve(h, port, f"n{i + 2}") for i, h in enumerate(hosts)]
    servers += [serve("127.0.0.1", p, f"s{i + 1}") for i, p in enumerate(srv_ports)]

    dns_port = udp_free_port()
    hosts_file = os.path.join(WORK, "records.hosts")

    def write_hosts(app_ips):
        lines = [f"{ip} app.{DOMAIN}" for ip in app_ips]
        lines += [f"127.0.0.1 node-a.{DOMAIN}", f"127.0.0.1 node-b.{DOMAIN}"]
        with open(hosts_file + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(hosts_file + ".tmp", hosts_file)

    write_hosts(["127.0.0.2", "127.0.0.3"])
    conf = os.path.join(WORK, "dnsmasq.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            "no-resolv", "no-hosts", "bind-interfaces", "listen-address=127.0.0.1",
            f"port={dns_port}", f"addn-hosts={hosts_file}", f"local=/{DOMAIN}/",
            "local-ttl=0", "no-negcache", "log-queries",
            # SRV: two targets at priority 10 (weights 3 and 1), a backup at priority 20.
            f"srv-host=_http._tcp.srv.{DOMAIN},node-a.{DOMAIN},{srv_ports[0]},10,3",
            f"srv-host=_http._tcp.srv.{DOMAIN},node-b.{DOMAIN},{srv_ports[1]},10,1",
            f"srv-host=_http._tcp.srv.{DOMAIN},backup.{DOMAIN},9,20,1",
        ]) + "\n")
    dns = start("dnsmasq", [dnsmasq, "--no-daemon", f"--conf-file={conf}", "--pid-file",
                            f"--user={os.environ.get('USER') or 'root'}"])
    time.sleep(0.5)
    if dns.poll() is not None:
        raise RuntimeError(f"dnsmasq exited: see {WORK}/dnsmasq.log")

    def config(listen, admin):
        return f"""
[listen]
http = ["127.0.0.1:{listen}"]
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "off"
[proxy]
trusted_proxies = ["127.0.0.1/32"]

[[routes]]
host = "srv.local"
pool = "srv"
[[routes]]
pool = "app"

[pools.app]
drain_timeout = "60s"
slow_start = "10s"
[pools.app.health]
path = "/health"
interval = "300ms"
rise = 1
fall = 2
[[pools.app.discover]]
dns = "app.{DOMAIN}"
port = {port}
interval = "1s"
hold = "5s"
resolver = ["127.0.0.1:{dns_port}"]

[pools.srv]
affinity = "route"
[[pools.srv.discover]]
srv = "_http._tcp.srv.{DOMAIN}"
interval = "1s"
resolver = ["127.0.0.1:{dns_port}"]
"""

    instances = []
    for i in range(2):
        listen, admin = free_port(), free_port()
        path = os.path.join(WORK, f"tether{i}.toml")
        with open(path, "w") as f:
            f.write(config(listen, admin))
        p = start(f"tether{i}", [TETHER, "run", "-c", path])
        instances.append((listen, admin, path, p))
    for listen, admin, _, _ in instances:
        wait_port(listen)
        wait_port(admin)
    proxy, admin, path, _ = instances[0]
    admins = [f"http://127.0.0.1:{a}" for _, a, _, _ in instances]
    idp = lambda ip: f"{ip}:{port}"  # noqa: E731
    sessions = []

    def a_records():
        wait_for("two A backends up", lambda: sum(
            1 for b in backends(admin, "app").values() if b["state"] == "up") == 2)
        bs = backends(admin, "app")
        assert set(bs) == {idp("127.0.0.2"), idp("127.0.0.3")}, bs
        assert all(b["source"] == f"dns:app.{DOMAIN}" for b in bs.values()), bs
        d = status(admin)["pools"]["app"]["discover"]
        assert d[0]["name"] == f"dns:app.{DOMAIN}" and d[0]["last_error"] is None, d
        assert d[0]["last_resolved_at"], d
        for i in range(60):
            s = Session(f"10.1.0.{i + 1}")
            st, b = s.get(proxy)
            assert st == 200 and b in ("n2", "n3"), (st, b)
            sessions.append((s, b))
        assert {b for _, b in sessions} == {"n2", "n3"}

    def srv_records():
        bs = backends(admin, "srv")
        want = {f"node-a.{DOMAIN}:{srv_ports[0]}": 3, f"node-b.{DOMAIN}:{srv_ports[1]}": 1}
        assert {k: b["weight"] for k, b in bs.items()} == want, bs
        assert all(b["source"] == f"dns:_http._tcp.srv.{DOMAIN}" for b in bs.values())
        # route = the target's first label: a Tomcat-style session id reaches its node.
        c = http.client.HTTPConnection("127.0.0.1", proxy, timeout=10)
        c.request("GET", "/", headers={"Host": "srv.local", "Cookie": "JSESSIONID=x.node-b"})
        r = c.getresponse()
        r.read()
        assert r.getheader("X-Backend") == "s2", r.getheader("X-Backend")

    def tether_check():
        out = subprocess.run([TETHER, "check", "-c", path], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"dns:app.{DOMAIN} resolves to 2 backends" in out.stdout, out.stdout
        assert f"node-a.{DOMAIN}:{srv_ports[0]}" in out.stdout, out.stdout

    def added_record_and_slow_start():
        write_hosts(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        os.kill(dns.pid, signal.SIGHUP)
        wait_for("n4 up", lambda: backends(admin, "app").get(idp("127.0.0.4"), {})
                 .get("state") == "up", timeout=10)
        t0 = time.time()
        shares = []
        k = 0
        while time.time() - t0 < 12:
            k += 1
            start_t = time.time() - t0
            share, _ = new_share(proxy, f"10.{20 + k % 200}", 200, "n4")
            mid = (start_t + time.time() - t0) / 2
            shares.append((round(mid, 1), round(share, 3)))
        print(f"      slow start: (seconds since n4 up, share of 200 new sessions on n4) "
              f"{shares}", flush=True)
        early = [s for t, s in shares if t < 2]
        late = [s for t, s in shares if t > 10.5]
        assert early and late, shares
        assert max(early) < 0.15, shares
        assert min(late) > 0.2, shares
        assert late[-1] > early[0] + 0.1, shares
        for s, first in sessions:
            st, b = s.get(proxy)
            assert st == 200 and b == first, f"session moved {first} -> {b}"

    def removed_record_drains_and_wait_drained():
        write_hosts(["127.0.0.3", "127.0.0.4"])
        os.kill(dns.pid, signal.SIGHUP)
        for a in (a for _, a, _, _ in instances):
            wait_for("n2 draining", lambda: backends(a, "app")[idp("127.0.0.2")]["state"]
                     == "draining", timeout=10)
        for s, first in sessions:
            st, b = s.get(proxy)
            assert st == 200 and b == first, f"pinned session moved {first} -> {b}"
        share, _ = new_share(proxy, "10.60", 150, "n2")
        assert share == 0, f"{share} of new sessions reached the draining backend"
        cmd = [TETHER, "ctl"]
        for a in admins:
            cmd += ["--admin", a]
        cmd += ["wait-drained", idp("127.0.0.2"), "--quiet", "3s", "--timeout", "60s"]
        waiter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        on_n2 = [s for s, b in sessions if b == "n2"]
        busy_end = time.time() + 5
        while time.time() < busy_end:
            for s in on_n2[:3]:
                st, b = s.get(proxy)
                assert st == 200 and b == "n2", (st, b)
            time.sleep(0.3)
            assert waiter.poll() is None, "wait-drained returned while pinned requests arrived"
        code = waiter.wait(timeout=30)
        done = time.time()
        out = waiter.stdout.read().decode()
        assert code == 0, (code, out)
        assert done - busy_end >= 2.5, f"returned {done - busy_end:.1f}s after the last request"
        entry = backends(admin, "app")[idp("127.0.0.2")]
        assert entry["pinned_while_draining"] > 0, entry
        # Exit 1 at --timeout while the backend still serves (n3 is up).
        t = subprocess.run([TETHER, "ctl", "--admin", admins[0], "wait-drained",
                            idp("127.0.0.3"), "--quiet", "1s", "--timeout", "2s"],
                           capture_output=True, timeout=30)
        assert t.returncode == 1, t

    def dns_down_changes_nothing():
        before = {k: b["state"] for k, b in backends(admin, "app").items()}
        kill(dns, signal.SIGTERM)
        wait_for("the resolution error in /status", lambda: status(admin)["pools"]["app"]
                 ["discover"][0]["last_error"] is not None, timeout=20)
        failed = 0
        total = 0
        end = time.time() + 4
        while time.time() < end:
            for s, _ in sessions[:20]:
                st, _ = s.get(proxy)
                total += 1
                failed += st != 200
            st, _ = Session(f"10.70.0.{total % 200 + 1}").get(proxy)
            total += 1
            failed += st != 200
        after = {k: b["state"] for k, b in backends(admin, "app").items()}
        assert after == before, (before, after)
        assert failed == 0, f"{failed} of {total} requests failed"
        assert len(backends(admin, "srv")) == 2
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        c.request("GET", "/metrics")
        m = c.getresponse().read().decode()
        assert f'tether_discovery_resolutions_total{{pool="app",name="dns:app.{DOMAIN}",result="error"}}' in m

    try:
        check("dns: pool from A records (ids, source, discover status)", a_records)
        check("dns: pool from SRV records (lowest priority, weights, routes)", srv_records)
        check("dns: tether check resolves each name once", tether_check)
        check("dns: added record gets new sessions, slow start share rises, no session moves",
              added_record_and_slow_start)
        check("dns: removed record drains; wait-drained (2 instances) waits for its users",
              removed_record_drains_and_wait_drained)
        check("dns: dnsmasq stopped changes nothing, 0 failed requests", dns_down_changes_nothing)
    finally:
        for p in PROCS:
            if p.poll() is None:
                kill(p)
        for s in servers:
            s.shutdown()
    failed = [n for n, e in RESULTS if e is not None]
    print(f"e2e dns: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"logs kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        code = main()
    except Exception as e:  # setup failed (a server would not start): report, clean up
        print(f"FAIL  setup: {e!r}\nlogs kept in {WORK}", flush=True)
        code = 1
    finally:
        for p in PROCS:
            if p.poll() is None:
                kill(p)
    sys.exit(code)
