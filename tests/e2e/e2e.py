#!/usr/bin/env python3
"""End-to-end tests of tether with real servers, all on 127.0.0.1.

- Tomcat 10 x3 (jvmRoute node1..3, a JSP counting visits in the HttpSession), route affinity.
- Flask under gunicorn x3 (per-instance secret key, visit counts in process memory),
  in cookie mode and in learn mode.
- Redis: two tether instances in learn mode sharing learned sessions; Redis stopped mid-test.

Run by tests/e2e/run.sh (which installs the servers). Prints one line per check and ends
with "N passed, M failed"; exits non-zero on any failure.
"""
import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target", "debug", "tether"))
CATALINA_HOME = os.environ.get("CATALINA_HOME", "/usr/share/tomcat10")
WORK = tempfile.mkdtemp(prefix="tether-e2e-")
PROCS = []
RESULTS = []


# ---- plumbing ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(name, cmd, env=None, cwd=None):
    log = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
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


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            kill(p)


class Browser:
    """A client with its own cookie jar and client IP (sent as X-Forwarded-For to a tether
    that trusts loopback)."""

    def __init__(self, ip, cookies=True):
        self.ip = ip
        self.jar = http.cookiejar.CookieJar()
        handlers = [urllib.request.HTTPCookieProcessor(self.jar)] if cookies else []
        self.opener = urllib.request.build_opener(*handlers)

    def get(self, url):
        req = urllib.request.Request(url, headers={"X-Forwarded-For": self.ip})
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def visits(body):
    m = re.search(r"visits=(\d+)", body)
    return int(m.group(1)) if m else None


def field(body, name):
    m = re.search(name + r"=(\S+)", body)
    return m.group(1) if m else None


def tether(name, pool, backends, extra=""):
    """Starts `tether run` with one pool over `backends` [(id, port, route)]; returns
    (process, proxy port, admin port)."""
    http_port, admin_port = free_port(), free_port()
    lines = [
        "[listen]", f'http = ["127.0.0.1:{http_port}"]',
        "[admin]", f'listen = "127.0.0.1:{admin_port}"',
        "[log]", 'access = "off"',
        "[proxy]", 'trusted_proxies = ["127.0.0.1/32"]', 'connect_timeout = "500ms"', "retries = 2",
        "[pools.app]", pool, extra,
    ]
    for bid, port, route in backends:
        lines += ["[[pools.app.backends]]", f'id = "{bid}"', f'address = "127.0.0.1:{port}"']
        if route:
            lines.append(f'route = "{route}"')
    path = os.path.join(WORK, name + ".toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = start(name, [TETHER, "run", "-c", path], env={"RUST_LOG": "warn"})
    wait_port(http_port, 30)
    return p, http_port, admin_port


def ctl(admin_port, *args):
    out = subprocess.run([TETHER, "ctl", "--admin", f"http://127.0.0.1:{admin_port}", *args],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise AssertionError(f"tether ctl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def check(name, fn):
    t = time.time()
    try:
        fn()
        RESULTS.append((name, None))
        print(f"ok    {name} ({time.time() - t:.1f}s)", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the run goes on
        RESULTS.append((name, e))
        print(f"FAIL  {name}: {e!r}", flush=True)


# ---- shared checks -----------------------------------------------------------------------

def counting_clients(url, n, prefix, node_of):
    """n browsers, 20 requests each: visit counts must run 1..20 with no reset. Returns
    [(browser, node)]."""
    out = []
    for i in range(n):
        b = Browser(f"{prefix}.{i + 1}")
        nodes = set()
        for k in range(1, 21):
            status, body = b.get(url)
            assert status == 200, f"client {i} request {k}: {status} {body!r}"
            assert visits(body) == k, f"client {i} expected visit {k}, got {body!r}"
            nodes.add(node_of(body))
        assert len(nodes) == 1, f"client {i} moved between {nodes}"
        out.append((b, nodes.pop()))
    used = {n for _, n in out}
    assert len(used) == 3, f"only nodes {used} used"
    return out


def continue_counting(clients, url, node_of, expect_reset_on=()):
    """Each client makes 2 more requests: sessions on nodes in expect_reset_on restart at 1
    on another node and then count on; the others continue where they were."""
    for b, node in clients:
        status, body = b.get(url)
        assert status == 200, f"{status} {body!r}"
        v = visits(body)
        if node in expect_reset_on:
            assert v == 1 and node_of(body) != node, f"session of lost {node}: {body!r}"
            status, body2 = b.get(url)
            assert visits(body2) == 2 and node_of(body2) == node_of(body), f"did not stick after moving: {body2!r}"
        else:
            assert v is not None and v > 1, f"a session of {node} was reset: {body!r}"
            status, body2 = b.get(url)
            assert visits(body2) == v + 1, f"{body2!r} after {body!r}"


# ---- Tomcat (route affinity) ---------------------------------------------------------------

def tomcat_suite():
    nodes = []
    for i in (1, 2, 3):
        base = os.path.join(WORK, f"tomcat{i}")
        os.makedirs(base)
        shutil.copytree(os.path.join(CATALINA_HOME, "etc"), os.path.join(base, "conf"))
        for d in ("logs", "temp", "work", "webapps"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        shutil.copytree(os.path.join(HERE, "tomcat", "ROOT"), os.path.join(base, "webapps", "ROOT"))
        port = free_port()
        with open(os.path.join(HERE, "tomcat", "server.xml")) as f:
            xml = f.read().replace("@PORT@", str(port)).replace("@ROUTE@", f"node{i}")
        with open(os.path.join(base, "conf", "server.xml"), "w") as f:
            f.write(xml)
        env = {"CATALINA_HOME": CATALINA_HOME, "CATALINA_BASE": base,
               "JAVA_OPTS": "-Xmx96m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.security.egd=file:/dev/./urandom"}
        p = start(f"tomcat{i}", [os.path.join(CATALINA_HOME, "bin", "catalina.sh"), "run"], env=env)
        nodes.append((f"tc{i}", port, f"node{i}", p))
    for _, port, _, _ in nodes:
        wait_port(port, 180)
    for _, port, _, _ in nodes:  # compile the JSPs before timing anything
        Browser("127.0.0.9").get(f"http://127.0.0.1:{port}/index.jsp")
        Browser("127.0.0.9").get(f"http://127.0.0.1:{port}/health.jsp")

    proc, http_port, admin = tether(
        "tether-tomcat", 'affinity = "route"\n[pools.app.route]\ncookie = "JSESSIONID"\nurl_param = "jsessionid"',
        [(n, p, r) for n, p, r, _ in nodes],
        '[pools.app.health]\npath = "/health.jsp"\ninterval = "300ms"\nrise = 1\nfall = 1')
    url = f"http://127.0.0.1:{http_port}/index.jsp"
    route_of = lambda body: (field(body, "session") or "").split(".")[-1]
    state = {}

    def sticky():
        state["clients"] = counting_clients(url, 20, "10.1.0", route_of)

    def url_rewriting():
        b = Browser("10.1.9.1", cookies=False)
        status, body = b.get(url)
        sid = field(body, "session")
        assert status == 200 and sid and "." in sid, body
        for k in range(2, 12):
            status, body = b.get(f"http://127.0.0.1:{http_port}/index.jsp;jsessionid={sid}")
            assert status == 200 and visits(body) == k and field(body, "session") == sid, f"{k}: {body!r}"

    def drain_keeps_sessions():
        clients = state["clients"]
        drained = clients[0][1]
        ctl(admin, "drain", {r: n for n, _, r, _ in nodes}[drained])
        continue_counting(clients, url, route_of)
        for i in range(20):
            status, body = Browser(f"10.1.5.{i + 1}").get(url)
            assert status == 200 and route_of(body) != drained, f"new session on draining {drained}: {body!r}"
        ctl(admin, "enable", {r: n for n, _, r, _ in nodes}[drained])
        state["drained"] = drained

    def stopping_a_node_restarts_only_its_sessions():
        clients = state["clients"]
        victim = next(r for r in ("node1", "node2", "node3") if r != state["drained"] and any(n == r for _, n in clients))
        kill(next(p for _, _, r, p in nodes if r == victim))
        continue_counting(clients, url, route_of, expect_reset_on={victim})

    check("tomcat: 20 clients x 20 requests count 1..20 on one node each", sticky)
    check("tomcat: a URL-rewritten ;jsessionid= client sticks", url_rewriting)
    check("tomcat: a drained node keeps its sessions and gets no new ones", drain_keeps_sessions)
    check("tomcat: stopping a node restarts only its sessions", stopping_a_node_restarts_only_its_sessions)
    kill(proc)
    for _, _, _, p in nodes:
        kill(p)


# ---- Flask (cookie and learn affinity) ----------------------------------------------------

def start_flask(prefix):
    apps = []
    for i in (1, 2, 3):
        port = free_port()
        p = start(f"{prefix}-flask{i}", [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "app:app"],
                  env={"APP_SECRET": f"secret-{prefix}-{i}-{os.getpid()}", "APP_NAME": f"flask{i}"},
                  cwd=os.path.join(HERE, "flask"))
        apps.append((f"flask{i}", port, None, p))
    for _, port, _, _ in apps:
        wait_port(port, 60)
    return apps


def flask_suite(mode):
    apps = start_flask(mode)
    pool = 'affinity = "cookie"' if mode == "cookie" else 'affinity = "learn"\n[pools.app.learn]\ncookie = "session"\nttl = "10m"'
    proc, http_port, admin = tether(f"tether-flask-{mode}", pool, [(n, p, r) for n, p, r, _ in apps],
                                    '[pools.app.health]\npath = "/health"\ninterval = "300ms"\nrise = 1\nfall = 1')
    url = f"http://127.0.0.1:{http_port}/"
    instance = lambda body: field(body, "instance")
    state = {}

    def sticky():
        state["clients"] = counting_clients(url, 20, f"10.2.{0 if mode == 'cookie' else 1}", instance)

    def drain():
        clients = state["clients"]
        drained = clients[0][1]
        ctl(admin, "drain", drained)
        continue_counting(clients, url, instance)
        for i in range(20):
            status, body = Browser(f"10.2.7.{i + 1}").get(url)
            assert status == 200 and instance(body) != drained, f"new session on draining {drained}"
        ctl(admin, "enable", drained)
        state["drained"] = drained

    def stop_one():
        clients = state["clients"]
        victim = next(n for n, _, _, _ in apps if n != state["drained"] and any(c == n for _, c in clients))
        kill(next(p for n, _, _, p in apps if n == victim))
        continue_counting(clients, url, instance, expect_reset_on={victim})

    check(f"flask/{mode}: 20 clients x 20 requests count 1..20 on one instance each", sticky)
    check(f"flask/{mode}: a drained instance keeps its sessions and gets no new ones", drain)
    check(f"flask/{mode}: stopping an instance restarts only its sessions", stop_one)
    kill(proc)
    for _, _, _, p in apps:
        kill(p)


# ---- Redis (learned sessions shared by two instances) ---------------------------------------

def redis_suite():
    rport = free_port()
    redis = start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    wait_port(rport, 30)
    apps = start_flask("redis")
    pool = f'affinity = "learn"\n[pools.app.learn]\ncookie = "session"\nttl = "10m"\nstore = "redis://127.0.0.1:{rport}/0"'
    backends = [(n, p, r) for n, p, r, _ in apps]
    hc = '[pools.app.health]\npath = "/health"\ninterval = "300ms"\nrise = 1\nfall = 1'
    a, a_port, _ = tether("tether-redis-a", pool, backends, hc)
    b, b_port, _ = tether("tether-redis-b", pool, backends, hc)
    time.sleep(1.5)  # both connect to Redis

    def shared():
        for i in range(10):
            br = Browser(f"10.3.0.{i + 1}")
            status, body = br.get(f"http://127.0.0.1:{a_port}/")
            assert status == 200 and visits(body) == 1, body
            home = field(body, "instance")
            time.sleep(0.1)  # visible to the other instance within 100 ms
            # Same browser, other tether (and another client IP): the session continues.
            br.ip = f"10.3.9.{i + 1}"
            for k in range(2, 6):
                status, body = br.get(f"http://127.0.0.1:{b_port}/")
                assert status == 200 and visits(body) == k and field(body, "instance") == home, \
                    f"instance b lost session {i}: {body!r} (home {home})"

    def redis_down():
        kill(redis)
        for port in (a_port, b_port):
            for i in range(10):
                br = Browser(f"10.3.5.{i + 1}")
                t = time.time()
                for k in range(1, 4):
                    status, body = br.get(f"http://127.0.0.1:{port}/")
                    assert status == 200, f"{status} {body!r} with Redis down"
                    assert visits(body) == k, f"a session broke with Redis down: {body!r}"
                assert time.time() - t < 2.0, "requests stalled with Redis down"

    check("redis: a session learned on one instance is routed right by the other", shared)
    check("redis: with Redis stopped, both instances keep serving from their local tables", redis_down)
    kill(a)
    kill(b)
    for _, _, _, p in apps:
        kill(p)


def main():
    if not os.path.exists(TETHER):
        print(f"missing {TETHER}: cargo build first", file=sys.stderr)
        return 2
    try:
        tomcat_suite()
        flask_suite("cookie")
        flask_suite("learn")
        redis_suite()
    except Exception as e:  # a server that would not start
        RESULTS.append(("setup", e))
        print(f"FAIL  setup: {e!r}", flush=True)
    finally:
        cleanup()
    failed = [n for n, e in RESULTS if e is not None]
    print(f"e2e: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"logs kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
