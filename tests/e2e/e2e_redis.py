#!/usr/bin/env python3
"""End-to-end tests of remembered keys and of stores that are clusters, all on 127.0.0.1.

- ip remember: 40 client addresses (real source addresses 127.0.0.2..41) on 3 Flask
  instances; a 4th added by reload moves none of them, new addresses reach it; a killed
  instance's addresses move and stay.
- Redis Cluster (3 primaries + 3 replicas, `redis-cli --cluster create`): two tether
  instances in learn mode share sessions; a primary is killed while traffic runs and its
  replica takes over: no failed request, every session still on its instance on both tethers
  (and on a third tether started afterwards, which only the cluster can tell).
- Redis Sentinel (primary, replica, 3 Sentinels): the primary is killed, Sentinel promotes
  the replica, tether follows: no failed request, and sessions learned on one instance are
  honoured by the other again.

Run by tests/e2e/run.sh. Prints one line per check and ends with "N passed, M failed".
"""
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target", "debug", "tether"))
WORK = tempfile.mkdtemp(prefix="tether-e2e-redis-")
PROCS = []
RESULTS = []


# ---- plumbing ------------------------------------------------------------------------------

def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_ports(n):
    """n ports p whose cluster bus ports p+10000 are free too."""
    out = []
    p = 21000 + (os.getpid() % 2000) * 2
    while len(out) < n and p < 55000:
        if port_free(p) and port_free(p + 10000):
            out.append(p)
        p += 1
    if len(out) < n:
        raise RuntimeError("no free ports for the Redis Cluster")
    return out


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


def check(name, fn):
    t = time.time()
    try:
        fn()
        RESULTS.append((name, None))
        print(f"ok    {name} ({time.time() - t:.1f}s)", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the run goes on
        RESULTS.append((name, e))
        print(f"FAIL  {name}: {e!r}", flush=True)


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def wait_for(what, fn, timeout):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """One client: its own source address (a real one on loopback, no X-Forwarded-For) and
    its own `session` cookie."""

    def __init__(self, source):
        self.source = source
        self.cookie = None

    def get(self, port, path="/", source=None):
        """(status, instance, visits); status 0 when the request failed outright. `source`
        sends this one request from another address (the session, not the address, must
        decide)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                          source_address=(source or self.source, 0))
        try:
            headers = {"Cookie": f"session={self.cookie}"} if self.cookie else {}
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            body = r.read().decode(errors="replace")
            for k, v in r.getheaders():
                if k.lower() == "set-cookie" and v.startswith("session="):
                    self.cookie = v.split(";", 1)[0][len("session="):]
            m = re.search(r"visits=(\d+) instance=(\S+)", body)
            if r.status != 200 or not m:
                return r.status, None, None
            return 200, m.group(2), int(m.group(1))
        except OSError as e:
            return 0, str(e), None
        finally:
            conn.close()


def start_flask(prefix, n=3):
    apps = []
    for i in range(1, n + 1):
        port = free_port()
        p = start(f"{prefix}-flask{i}",
                  [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "8",
                   "-b", f"127.0.0.1:{port}", "app:app"],
                  env={"APP_SECRET": f"secret-{prefix}-{i}-{os.getpid()}", "APP_NAME": f"flask{i}"},
                  cwd=os.path.join(HERE, "flask"))
        apps.append({"id": f"flask{i}", "port": port, "proc": p})
    for a in apps:
        wait_port(a["port"], 60)
    return apps


def tether_config(path, http_port, admin_port, pool, apps):
    lines = [
        "[listen]", f'http = ["127.0.0.1:{http_port}"]',
        "[admin]", f'listen = "127.0.0.1:{admin_port}"',
        "[log]", 'access = "off"',
        "[proxy]", 'connect_timeout = "500ms"', "retries = 2",
        "[pools.app]", pool,
        "[pools.app.health]", 'path = "/health"', 'interval = "300ms"', "rise = 1", "fall = 1",
    ]
    for a in apps:
        lines += ["[[pools.app.backends]]", f'id = "{a["id"]}"', f'address = "127.0.0.1:{a["port"]}"']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def tether(name, pool, apps):
    """Starts `tether run`; returns (process, proxy port, admin port, config path)."""
    http_port, admin_port = free_port(), free_port()
    path = os.path.join(WORK, name + ".toml")
    tether_config(path, http_port, admin_port, pool, apps)
    p = start(name, [TETHER, "run", "-c", path], env={"RUST_LOG": "info"})
    wait_port(http_port, 30)
    return p, http_port, admin_port, path


def status(admin_port):
    import json
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def metrics(admin_port):
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def reload(admin_port):
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("POST", "/reload")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, f"reload: {r.status} {body}"
    finally:
        conn.close()


def store_connected(admin_port, table):
    s = status(admin_port)["pools"]["app"][table]["store"]
    return s["state"] == "connected"


# ---- ip remember ---------------------------------------------------------------------------

def ip_suite():
    apps = start_flask("remember", 4)
    first3, fourth = apps[:3], apps[3]
    pool = 'affinity = "ip"\n[pools.app.remember]\nttl = "10m"\ncapacity = 10000'
    proc, port, admin, path = tether("tether-remember", pool, first3)
    clients = [Client(f"127.0.0.{i}") for i in range(2, 42)]
    state = {}

    def homes(cs):
        out = {}
        for c in cs:
            seen = set()
            for _ in range(3):
                st, inst, _ = c.get(port)
                assert st == 200, f"{c.source}: {st} {inst}"
                seen.add(inst)
            assert len(seen) == 1, f"{c.source} moved between {seen}"
            out[c.source] = seen.pop()
        return out

    def active():
        state["before"] = homes(clients)
        used = set(state["before"].values())
        assert len(used) == 3, f"40 addresses used only {used}"

    def add_fourth():
        tether_config(path, port, admin, pool, apps)
        reload(admin)
        # The new instance must be up (health checked) before it can take anything.
        wait_for("flask4 up", lambda: any(b["id"] == "flask4" and b["state"] == "up"
                                          for b in status(admin)["pools"]["app"]["backends"]), 10)
        after = homes(clients)
        moved = [ip for ip in after if after[ip] != state["before"][ip]]
        assert not moved, f"{len(moved)} of 40 active addresses moved: {moved}"
        fresh = homes([Client(f"127.0.1.{i}") for i in range(2, 42)])
        on_new = sum(1 for v in fresh.values() if v == "flask4")
        assert on_new > 0, f"no new address reached the new instance: {fresh}"
        state["after"] = after
        print(f"      0 of 40 active addresses moved; {on_new} of 40 new ones reached flask4")

    def kill_one():
        after = state["after"]
        victim = max(("flask1", "flask2", "flask3"),
                     key=lambda n: sum(1 for v in after.values() if v == n))
        kill(next(a["proc"] for a in apps if a["id"] == victim))
        moved = homes(clients)
        for ip, home in after.items():
            if home == victim:
                assert moved[ip] != victim, f"{ip} still on the dead {victim}"
            else:
                assert moved[ip] == home, f"{ip} moved off healthy {home} to {moved[ip]}"
        # Once the dead instance is marked down, and again later: they stay where they moved.
        time.sleep(1.0)
        again = homes(clients)
        assert again == moved, "addresses moved again after being re-placed"
        n = sum(1 for v in after.values() if v == victim)
        print(f"      {n} addresses of the killed {victim} moved once and stayed")

    check("remember/ip: 40 active client addresses, 3 requests each, stay on one instance", active)
    check("remember/ip: a 4th instance added by reload moves 0 of them; new addresses reach it", add_fourth)
    check("remember/ip: a killed instance's addresses move and stay", kill_one)
    kill(proc)
    for a in apps:
        kill(a["proc"])


# ---- learned sessions through a store that fails over --------------------------------------

class Traffic:
    """Runs new sessions through two tethers while a failover happens: each one is created on
    A and continued on B 150 ms later. Counts failed requests (non-200 or no answer) and
    sessions B did not honour."""

    def __init__(self, a_port, b_port):
        self.a, self.b = a_port, b_port
        self.failed = []
        self.mismatched = []
        self.done = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(k,), daemon=True) for k in range(4)]

    def run(self, k):
        i = 0
        while not self.stop.is_set():
            i += 1
            c = Client(f"127.2.{k}.{i % 250 + 1}")
            st, inst, v = c.get(self.a)
            if st != 200:
                self.failed.append(("a", st, inst))
                continue
            time.sleep(0.15)
            st, inst2, v2 = c.get(self.b, source=f"127.5.{k}.{i % 250 + 1}")
            if st != 200:
                self.failed.append(("b", st, inst2))
                continue
            if inst2 != inst or v2 != 2:
                self.mismatched.append((time.time(), inst, inst2, v2))
            self.done += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def sessions_on(port, sessions, n_requests=2):
    """Every (client, home) continues on `port` at its home instance, from another source
    address (so placement by address cannot pass for stickiness); returns problems."""
    bad = []
    for j, (c, home) in enumerate(sessions):
        for k in range(n_requests):
            st, inst, _ = c.get(port, source=f"127.6.{k}.{j % 250 + 1}")
            if st != 200 or inst != home:
                bad.append((c.source, home, st, inst))
                break
    return bad


def learn_store_suite(name, store, primaries, kill_primary, failover_done):
    """Two tethers in learn mode on `store`. `kill_primary()` kills one primary and returns
    a description; `failover_done()` is true once a replica has taken over."""
    apps = start_flask(name)
    pool = f'affinity = "learn"\n[pools.app.learn]\ncookie = "session"\nttl = "10m"\nstore = "{store}"'
    a, a_port, a_admin, _ = tether(f"tether-{name}-a", pool, apps)
    b, b_port, b_admin, _ = tether(f"tether-{name}-b", pool, apps)
    wait_for("both tethers connected to the store",
             lambda: store_connected(a_admin, "learn") and store_connected(b_admin, "learn"), 20)
    state = {}

    def shared():
        sessions = []
        for i in range(40):
            c = Client(f"127.3.0.{i + 2}")
            st, home, v = c.get(a_port)
            assert st == 200 and v == 1, (st, home, v)
            sessions.append((c, home))
        assert len({h for _, h in sessions}) == 3
        time.sleep(0.1)  # visible to the other instance within 100 ms
        bad = sessions_on(b_port, sessions)
        assert not bad, f"B did not honour {len(bad)} of 40 sessions learned on A: {bad[:3]}"
        state["sessions"] = sessions

    def failover():
        with Traffic(a_port, b_port) as t:
            time.sleep(1.0)
            victim = kill_primary()
            t_kill = time.time()
            wait_for("a replica to take over", failover_done, 30)
            t_done = time.time()
            # Traffic continues past the failover.
            time.sleep(3.0)
        assert t.done > 20, f"only {t.done} sessions ran during the failover"
        assert not t.failed, f"{len(t.failed)} failed requests during the failover: {t.failed[:5]}"
        late = [m for m in t.mismatched if m[0] > t_done + 2.0]
        assert not late, f"{len(late)} sessions not honoured by B more than 2 s after the failover: {late[:3]}"
        # Sessions from before the failover are on their instance on both tethers.
        for port in (a_port, b_port):
            bad = sessions_on(port, state["sessions"])
            assert not bad, f"{len(bad)} sessions lost their instance on :{port}: {bad[:3]}"
        # And the store still has every one of them: a fresh tether, with an empty local
        # table, routes them all right.
        c_proc, c_port, c_admin, _ = tether(f"tether-{name}-c", pool, apps)
        wait_for("C connected", lambda: store_connected(c_admin, "learn"), 20)
        bad = sessions_on(c_port, state["sessions"], 1)
        kill(c_proc)
        assert not bad, f"a fresh instance missed {len(bad)} of 40 sessions after the failover: {bad[:3]}"
        print(f"      killed {victim}; replica took over in {t_done - t_kill:.1f}s; {t.done} sessions "
              f"during it, 0 failed requests, {len(t.mismatched)} briefly not honoured by B "
              f"(none later than 2 s after the failover completed)")

    def after():
        # New sessions learned on A are visible on B again (and on A from B).
        fresh = []
        for i in range(30):
            c = Client(f"127.4.0.{i + 2}")
            st, home, _ = c.get(a_port if i % 2 == 0 else b_port)
            assert st == 200
            fresh.append((c, home, i % 2))
        time.sleep(0.1)
        bad = []
        for c, home, side in fresh:
            st, inst, v = c.get(b_port if side == 0 else a_port, source=f"127.7.0.{i + 2}")
            if st != 200 or inst != home or v != 2:
                bad.append((c.source, home, inst, v))
        assert not bad, f"{len(bad)} of 30 new sessions not shared after the failover: {bad[:3]}"
        m = metrics(a_admin)
        assert 'tether_store_operations_total{pool="app",op="write",result="ok"}' in m, m
        s = status(a_admin)["pools"]["app"]["learn"]["store"]
        assert s["state"] == "connected", s

    check(f"{name}: sessions learned on one tether are honoured by the other", shared)
    check(f"{name}: a primary killed while traffic runs: 0 failed requests, sessions kept", failover)
    check(f"{name}: after the failover, new sessions are shared again", after)
    kill(a)
    kill(b)
    for x in apps:
        kill(x["proc"])


def remember_store_suite(store):
    """ip remember shared through the store: an instance that joins the fleet with a 4th
    backend sends the addresses the others placed to the backends they were placed on."""
    apps = start_flask("remember-store", 4)
    pool = f'affinity = "ip"\n[pools.app.remember]\nttl = "10m"\nstore = "{store}"'
    a, a_port, a_admin, _ = tether("tether-remember-store-a", pool, apps[:3])
    wait_for("A connected", lambda: store_connected(a_admin, "remember"), 20)

    def shared():
        clients = [Client(f"127.8.0.{i}") for i in range(2, 42)]
        homes = {}
        for c in clients:
            st, inst, _ = c.get(a_port)
            assert st == 200, (st, inst)
            homes[c.source] = inst
        time.sleep(0.2)
        b, b_port, b_admin, _ = tether("tether-remember-store-b", pool, apps)
        plain, plain_port, _, _ = tether("tether-remember-store-plain",
                                         'affinity = "ip"\n[pools.app.remember]\nttl = "10m"', apps)
        wait_for("B connected", lambda: store_connected(b_admin, "remember"), 20)
        wait_for("flask4 up on B", lambda: all(x["state"] == "up" for x in status(b_admin)["pools"]["app"]["backends"]), 10)
        moved = []
        rehashed = 0
        for c in clients:
            st, inst, _ = c.get(b_port)
            if st != 200 or inst != homes[c.source]:
                moved.append((c.source, homes[c.source], st, inst))
            st, inst, _ = c.get(plain_port)
            rehashed += st == 200 and inst != homes[c.source]
        kill(b)
        kill(plain)
        assert not moved, f"{len(moved)} of 40 addresses placed by A went elsewhere on B: {moved[:3]}"
        assert rehashed > 0, "the 4-backend mapping moves no address: the check proves nothing"
        print(f"      0 of 40 moved on the joining instance (hashing alone would move {rehashed})")

    check("redis-cluster: remembered ip keys are shared: an instance joining with a 4th backend moves none", shared)
    kill(a)
    for x in apps:
        kill(x["proc"])


def cluster_suite():
    ports = cluster_ports(6)
    nodes = {}
    for p in ports:
        d = os.path.join(WORK, f"cluster-{p}")
        os.makedirs(d)
        nodes[p] = start(f"redis-cluster-{p}", [
            "redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
            "--repl-diskless-sync-delay", "0",
            "--save", "", "--appendonly", "no", "--dir", d])
    for p in ports:
        wait_port(p, 30)
    out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                          "--cluster-replicas", "1", "--cluster-yes"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for("cluster_state:ok", lambda: all("cluster_state:ok" in redis_cli(p, "cluster", "info")
                                             for p in ports), 60)

    def roles():
        r = {}
        for p in ports:
            if nodes[p].poll() is None:
                first = redis_cli(p, "role").split("\n", 1)[0].strip()
                r[p] = first
        return r

    primaries = [p for p, role in roles().items() if role == "master"]
    assert len(primaries) == 3, roles()
    replicas = [p for p in ports if p not in primaries]
    wait_for("every replica in sync", lambda: all(
        "master_link_status:up" in redis_cli(q, "info", "replication") for q in replicas), 30)
    killed = {}

    def kill_primary():
        p = primaries[0]
        # Its replica, by the cluster's own view.
        replicas = [q for q in ports if q != p and
                    f"master_port:{p}" in redis_cli(q, "info", "replication")]
        killed["port"], killed["replica"] = p, replicas
        kill(nodes[p])
        return f"primary 127.0.0.1:{p} (replica {replicas})"

    def failover_done():
        live = [q for q in killed["replica"] if nodes[q].poll() is None]
        return any(redis_cli(q, "role").startswith("master") for q in live) and \
            "cluster_state:ok" in redis_cli(live[0] if live else ports[1], "cluster", "info")

    store = "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    learn_store_suite("redis-cluster", store, primaries, kill_primary, failover_done)
    remember_store_suite(store)
    for p in ports:
        kill(nodes[p])


def sentinel_suite():
    primary_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", WORK,
              "--repl-diskless-sync-delay", "0"]
    servers = {
        primary_port: start("sentinel-primary", ["redis-server", "--port", str(primary_port), *common]),
    }
    wait_port(primary_port, 30)
    servers[replica_port] = start("sentinel-replica", ["redis-server", "--port", str(replica_port), *common,
                                                       "--replicaof", "127.0.0.1", str(primary_port)])
    wait_port(replica_port, 30)
    wait_for("replica in sync", lambda: "master_link_status:up" in redis_cli(replica_port, "info", "replication"), 30)
    sentinels = []
    for i in range(3):
        sp = free_port()
        conf = os.path.join(WORK, f"sentinel-{i}.conf")
        with open(conf, "w") as f:
            f.write(f"port {sp}\nbind 127.0.0.1\ndir {WORK}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n"
                    "sentinel down-after-milliseconds mymaster 1000\n"
                    "sentinel failover-timeout mymaster 5000\n"
                    "sentinel parallel-syncs mymaster 1\n")
        start(f"sentinel-{i}", ["redis-sentinel", conf])
        sentinels.append(sp)
    for sp in sentinels:
        wait_port(sp, 30)
    wait_for("sentinels know the replica and each other",
             lambda: all("num-other-sentinels" in redis_cli(sp, "sentinel", "master", "mymaster") and
                         _num(redis_cli(sp, "sentinel", "master", "mymaster"), "num-other-sentinels") >= 2
                         for sp in sentinels), 30)

    def master_port():
        out = redis_cli(sentinels[0], "sentinel", "get-master-addr-by-name", "mymaster").split()
        return int(out[1]) if len(out) == 2 else None

    def kill_primary():
        kill(servers[primary_port])
        return f"primary 127.0.0.1:{primary_port}"

    def failover_done():
        return master_port() == replica_port and \
            redis_cli(replica_port, "role").startswith("master")

    store = "redis-sentinel://" + ",".join(f"127.0.0.1:{sp}" for sp in sentinels) + "/mymaster/0"
    learn_store_suite("redis-sentinel", store, [primary_port], kill_primary, failover_done)


def _num(sentinel_master_output, field):
    lines = sentinel_master_output.split("\n")
    for k, v in zip(lines, lines[1:]):
        if k.strip() == field:
            try:
                return int(v.strip())
            except ValueError:
                return 0
    return 0


def main():
    if not os.path.exists(TETHER):
        print(f"missing {TETHER}: cargo build first", file=sys.stderr)
        return 2
    only = sys.argv[1:]
    try:
        for name, suite in (("ip", ip_suite), ("cluster", cluster_suite), ("sentinel", sentinel_suite)):
            if not only or name in only:
                try:
                    suite()
                except Exception as e:  # a server that would not start
                    RESULTS.append((f"{name} setup", e))
                    print(f"FAIL  {name} setup: {e!r}", flush=True)
    finally:
        cleanup()
    failed = [n for n, e in RESULTS if e is not None]
    print(f"e2e_redis: {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"logs kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
