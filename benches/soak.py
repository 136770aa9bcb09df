"""Driver for benches/soak.sh (see there)."""
import http.client
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

DURATION = int(sys.argv[1])
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TETHER = os.path.join(ROOT, "target", "release", "tether")
WORK = tempfile.mkdtemp(prefix="tether-soak-")
BACKENDS = {"b1": 18601, "b2": 18602, "b3": 18603}
PORT, ADMIN = 18610, 18611
SESSIONS = 40
procs = {}
lock = threading.Lock()
down_windows = {name: [] for name in BACKENDS}  # [start, end] while a backend is dead (+grace)
stop = threading.Event()
stats = {"ok": 0, "failed": [], "moved_off_healthy": 0, "moved_expected": 0, "unexpected_moves": []}
START = time.time()


def start_backend(name):
    port = BACKENDS[name]
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"master_process off; worker_processes 1; daemon off; pid {d}/pid; error_log {d}/logs/error.log;\n"
                f"events {{ worker_connections 1024; }}\n"
                f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{name}\\n\"; }} }} }}\n")
    procs[name] = subprocess.Popen(["nginx", "-p", d, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_config(generation):
    lines = [f'[listen]\nhttp = ["127.0.0.1:{PORT}"]', f'[admin]\nlisten = "127.0.0.1:{ADMIN}"', '[log]\naccess = "off"',
             f'[proxy]\nconnect_timeout = "{300 + generation % 2 * 100}ms"\nretries = 2',
             '[pools.app]\naffinity = "cookie"',
             '[pools.app.health]\npath = "/"\ninterval = "500ms"\ntimeout = "1s"\nrise = 2\nfall = 2',
             '[pools.app.passive]\nmax_fails = 2\nfail_timeout = "2s"']
    for name, port in BACKENDS.items():
        lines.append(f'[[pools.app.backends]]\nid = "{name}"\naddress = "127.0.0.1:{port}"')
    path = os.path.join(WORK, "tether.toml")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    return path


def in_window(name, t):
    return any(a <= t <= b for a, b in down_windows.get(name, []))


def session(i):
    cookie, home, conn = None, None, None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            headers = {"X-Forwarded-For": f"10.0.{i // 250}.{i % 250 + 1}"}
            if cookie:
                headers["Cookie"] = cookie
            conn.request("GET", "/", headers=headers)
            r = conn.getresponse()
            body = r.read().decode().strip()
            t = time.time()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            sc = r.getheader("Set-Cookie")
            if sc:
                cookie = sc.split(";")[0]
            with lock:
                stats["ok"] += 1
                if home is not None and body != home:
                    if in_window(home, t):
                        stats["moved_expected"] += 1
                    else:
                        stats["moved_off_healthy"] += 1
                        stats["unexpected_moves"].append((round(t - START, 1), home, body))
            home = body
        except Exception as e:  # noqa: BLE001 - every failure is counted
            t = time.time()
            with lock:
                stats["failed"].append((t, home, repr(e)))
            conn = None
            time.sleep(0.05)
        time.sleep(random.uniform(0.005, 0.02))


def rss_fds(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    for name in BACKENDS:
        start_backend(name)
    gen = 0
    path = write_config(gen)
    tether = subprocess.Popen([TETHER, "run", "-c", path, "--threads", "1"], stderr=open(os.path.join(WORK, "tether.log"), "w"))
    time.sleep(2)
    base_rss, base_fds = rss_fds(tether.pid)
    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(SESSIONS)]
    for t in threads:
        t.start()
    start = time.time()
    samples = []
    next_reload, next_kill, next_sample = start + 5, start + 30, start + 10
    victims = list(BACKENDS)
    restart = None
    try:
        while time.time() - start < DURATION:
            now = time.time()
            if now >= next_reload:
                gen += 1
                write_config(gen)
                tether.send_signal(signal.SIGHUP)
                next_reload += 5
            if now >= next_kill and restart is None:
                victim = victims[(int((now - start) // 30) - 1) % 3]
                # The window opens before the kill, so no session sees the move first.
                with lock:
                    down_windows[victim].append([now - 0.5, now + 1e9])
                procs[victim].kill()
                procs[victim].wait()
                restart = (victim, now + 5)
                next_kill += 30
            if restart and now >= restart[1]:
                victim = restart[0]
                start_backend(victim)
                # Sessions may still move until health checks see it up and the window closes.
                with lock:
                    down_windows[victim][-1][1] = now + 3
                restart = None
            if now >= next_sample:
                samples.append((round(now - start), *rss_fds(tether.pid)))
                next_sample += 10
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    time.sleep(22)  # idle backend connections are swept after 15 s (+ the 5 s sweep period)
    end_rss, end_fds = rss_fds(tether.pid)
    tether.terminate()
    tether.wait(timeout=40)
    for p in procs.values():
        p.kill()
    outside = [f for f in stats["failed"] if not (f[1] and in_window(f[1], f[0]))]
    warm = [s for s in samples if s[0] >= 60] or samples
    growth = (max(s[1] for s in warm) - warm[0][1]) / warm[0][1] * 100 if warm else 0.0
    print(f"duration: {DURATION} s, sessions: {SESSIONS}, reloads: {gen}, backend kills: {sum(len(w) for w in down_windows.values())}")
    print(f"requests: {stats['ok'] + len(stats['failed'])} ({stats['ok']} ok)")
    print(f"failed inside kill windows: {len(stats['failed']) - len(outside)}")
    print(f"failed outside kill windows: {len(outside)} (must be 0)")
    print(f"sessions moved off a dead backend: {stats['moved_expected']}")
    print(f"sessions moved off healthy backends: {stats['moved_off_healthy']} (must be 0)")
    print(f"RSS: start {base_rss // 1024} MiB; after warm-up {warm[0][1] // 1024} MiB, max {max(s[1] for s in warm) // 1024} MiB; growth {growth:.1f} % (must be < 10 %)")
    print(f"open fds: baseline {base_fds}, end {end_fds} ({'back to baseline' if end_fds <= base_fds else 'NOT back'})")
    print("samples (s, RSS KiB, fds):", samples)
    ok = not outside and stats["moved_off_healthy"] == 0 and growth < 10 and end_fds <= base_fds
    for f in outside[:5]:
        print("  failure:", f)
    for m in stats["unexpected_moves"][:10]:
        print("  moved off a healthy backend (s, from, to):", m)
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
