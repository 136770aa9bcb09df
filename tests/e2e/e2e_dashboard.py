#!/usr/bin/env python3
"""End-to-end test of the admin dashboard (`GET /` on the admin listener) in a real browser.

Debian's chromium, driven through Debian's chromium-driver by Selenium (both system binaries,
nothing downloaded at run time), opens the page of a running tether in front of three small
Python HTTP backends, all on 127.0.0.1. Checks:

- the page lists every backend with the state /status gives (one disabled beforehand);
- traffic makes the request-rate curve rise;
- clicking Drain (the page asks for the admin token, again after a wrong one) turns the backend draining in /status
  and on the page;
- its pinned-requests curve rises while its sessions keep coming and falls to zero after
  they stop;
- the buttons work by keyboard (Tab, Enter) with a visible focus ring, keeping focus;
- stopping tether shows the "not answering" state.

Screenshots: target/dashboard.png (while draining) and target/dashboard-down.png. Run by
tests/e2e/run.sh. Prints one line per check and "N passed, M failed".
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TETHER = os.environ.get("TETHER_BIN", os.path.join(ROOT, "target", "debug", "tether"))
SHOTS = os.path.join(ROOT, "target")
WORK = tempfile.mkdtemp(prefix="tether-e2e-dash-")
TOKEN = "e2e-dashboard-token"
RESULTS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, cond, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if cond():
                return
        except Exception:  # the page may be mid-refresh: look again
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def check(name, fn):
    try:
        fn()
        RESULTS.append((name, None))
        print(f"ok    {name}", flush=True)
    except Exception as e:  # a failed check is reported, the others still run
        RESULTS.append((name, e))
        print(f"FAIL  {name}: {e!r}", flush=True)


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
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


def serve(name):
    srv = Quiet(("127.0.0.1", 0), Named)
    srv.name = name
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Session:
    """A browser-like client: keeps tether's cookie; its client address is sent in
    X-Forwarded-For (the config trusts it from loopback), so new sessions spread as users
    behind different addresses would."""

    def __init__(self, port, ip):
        self.port = port
        self.ip = ip
        self.cookie = None

    def get(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {"X-Forwarded-For": self.ip}
        if self.cookie:
            headers["Cookie"] = f"TETHER={self.cookie}"
        c.request("GET", "/", headers=headers)
        r = c.getresponse()
        r.read()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie" and v.startswith("TETHER="):
                self.cookie = v.split(";")[0][len("TETHER="):]
        c.close()
        return r.getheader("X-Backend")


def admin(port, method, path, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    c.request(method, path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, json.loads(body) if body.startswith(b"{") else body


def status_states(port):
    _, doc = admin(port, "GET", "/status")
    return {b["id"]: b["state"] for b in doc["pools"]["app"]["backends"]}


def traffic(sessions, seconds, max_requests=5000):
    """Requests from `sessions` in turn for `seconds` (at most `max_requests`)."""
    end, n = time.time() + seconds, 0
    while time.time() < end and n < max_requests:
        for s in sessions:
            s.get()
            n += 1
        time.sleep(0.02)
    return n


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,900",
                 f"--user-data-dir={os.path.join(WORK, 'chromium-profile')}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                            options=opts)


def main():
    if not os.path.exists(TETHER):
        print(f"missing {TETHER}: cargo build first", file=sys.stderr)
        return 2
    backends = {name: serve(name) for name in ["app1", "app2", "app3"]}
    http_port, admin_port = free_port(), free_port()
    cfg = os.path.join(WORK, "tether.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[listen]
http = ["127.0.0.1:{http_port}"]

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

[pools.app]
affinity = "cookie"

[pools.app.cookie]
name = "TETHER"

[pools.app.health]
path = "/health"
interval = "1s"
""")
        for name, srv in backends.items():
            f.write(f'\n[[pools.app.backends]]\nid = "{name}"\n'
                    f'address = "127.0.0.1:{srv.server_address[1]}"\n')
    log = open(os.path.join(WORK, "tether.log"), "w")
    tether = subprocess.Popen([TETHER, "run", "-c", cfg], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env={**os.environ, "RUST_LOG": "warn"})
    driver = None
    try:
        wait_for("tether's backends up", lambda: set(status_states(admin_port).values()) == {"up"})
        assert admin(admin_port, "POST", "/pools/app/backends/app3/disable", TOKEN)[0] == 200
        driver = browser()
        driver.get(f"http://127.0.0.1:{admin_port}/")
        page_state = {}

        def row(b):
            return driver.find_element(By.CSS_SELECTOR, f'tr[data-backend="{b}"]')

        def plot_last(b, i):
            v = row(b).find_element(By.CSS_SELECTOR, 'svg[data-series="rates"]') \
                .get_attribute(f"data-last{i}")
            return float(v) if v else None

        def lists_every_backend():
            want = status_states(admin_port)
            assert want == {"app1": "up", "app2": "up", "app3": "disabled"}, want
            wait_for("every backend on the page with its state", lambda: {
                r.get_attribute("data-backend"): r.get_attribute("data-state")
                for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-backend]")} == want)
            assert row("app3").find_element(By.CSS_SELECTOR, 'td[data-col="state"]').text \
                .lower() == "disabled"
            assert "not answering" not in driver.find_element(By.ID, "live").text
        check("the page lists every backend with its /status state", lists_every_backend)

        sessions = [Session(http_port, f"10.9.0.{i + 1}") for i in range(12)]

        def rate_rises():
            before = [plot_last(b, 0) or 0.0 for b in ["app1", "app2"]]
            assert sum(before) == 0.0, f"no traffic yet, yet the plot shows {before}"
            t = threading.Thread(target=traffic, args=(sessions, 6.0))
            t.start()
            wait_for("a request rate above zero on the plot",
                     lambda: sum(plot_last(b, 0) or 0 for b in ["app1", "app2"]) > 1.0)
            t.join()
            peak = max(float(row(b).find_element(By.CSS_SELECTOR, 'svg[data-series="rates"]')
                             .get_attribute("data-max")) for b in ["app1", "app2"])
            page_state["peak"] = peak
            print(f"      peak request rate on the plot: {peak:.1f}/s", flush=True)
            assert peak > 1.0
        check("traffic makes the request rate rise on the plot", rate_rises)

        # The backend to drain: the one most sessions stick to.
        pins = {}
        for s in sessions:
            pins.setdefault(s.get(), []).append(s)
        target = max(pins, key=lambda b: len(pins[b]))
        print(f"      sessions per backend: { {b: len(v) for b, v in pins.items()} }; "
              f"draining {target}", flush=True)
        pinned = pins[target]

        def drain_by_click():
            button = row(target).find_element(By.CSS_SELECTOR, 'button[data-action="drain"]')
            button.click()
            # A wrong token first: refused, asked for again.
            for token in ["not-the-token", TOKEN]:
                wait_for("the token prompt", lambda: driver.switch_to.alert is not None, 10)
                alert = driver.switch_to.alert
                alert.send_keys(token)
                alert.accept()
                if token != TOKEN:
                    time.sleep(0.5)
                    assert status_states(admin_port)[target] == "up", "drained by a wrong token"
            wait_for(f"{target} draining in /status",
                     lambda: status_states(admin_port)[target] == "draining", 10)
            wait_for(f"{target} draining on the page",
                     lambda: row(target).get_attribute("data-state") == "draining", 10)
            assert driver.execute_script(
                "return sessionStorage.getItem('tether-token')") == TOKEN
        check("clicking Drain (with the token) drains the backend", drain_by_click)

        def pinned_curve_falls():
            t = threading.Thread(target=traffic, args=(pinned, 6.0))
            t.start()
            wait_for("pinned requests/s above zero on the plot",
                     lambda: (plot_last(target, 1) or 0) > 0.5)
            t.join()
            _, b = admin(admin_port, "GET", f"/pools/app/backends/{target}")
            assert b["pinned_while_draining"] > 0 and b["last_pinned_at"], b
            shown = row(target).find_element(By.CSS_SELECTOR, 'td[data-col="pinned"]').text
            assert "last" in shown, shown
            wait_for("pinned requests/s back to zero", lambda: plot_last(target, 1) == 0.0)
            driver.save_screenshot(os.path.join(SHOTS, "dashboard.png"))
        check("the pinned-requests curve falls to zero after the sessions stop",
              pinned_curve_falls)

        def keyboard():
            drain = row(target).find_element(By.CSS_SELECTOR, 'button[data-action="drain"]')
            enable = row(target).find_element(By.CSS_SELECTOR, 'button[data-action="enable"]')
            drain.send_keys("")  # focus it, as a click or Tab would
            driver.switch_to.active_element.send_keys(Keys.TAB)
            focused = driver.switch_to.active_element
            assert focused == enable, "Tab from Drain does not reach Enable"
            outline = driver.execute_script(
                "const s = getComputedStyle(document.activeElement);"
                "return [s.outlineStyle, s.outlineWidth];")
            assert outline[0] != "none" and outline[1] != "0px", f"no focus ring: {outline}"
            focused.send_keys(Keys.ENTER)
            wait_for(f"{target} up again in /status",
                     lambda: status_states(admin_port)[target] == "up", 10)
            wait_for(f"{target} up again on the page",
                     lambda: row(target).get_attribute("data-state") == "up", 10)
            assert driver.switch_to.active_element == enable, "the button lost focus"
        check("keyboard: Tab to Enable, Enter re-enables, focus stays and shows", keyboard)

        def not_answering():
            tether.send_signal(signal.SIGKILL)
            tether.wait(timeout=10)
            wait_for("the not-answering banner", lambda: driver.find_element(
                By.ID, "down").is_displayed(), 10)
            assert driver.find_element(By.TAG_NAME, "body") \
                .get_attribute("data-answering") == "no"
            assert "not answering" in driver.find_element(By.ID, "live").text
            driver.save_screenshot(os.path.join(SHOTS, "dashboard-down.png"))
        check("stopping tether shows the not-answering state", not_answering)
    finally:
        if driver is not None:
            driver.quit()
        if tether.poll() is None:
            os.killpg(tether.pid, signal.SIGKILL)
            tether.wait()
        for srv in backends.values():
            srv.shutdown()
    failed = [n for n, e in RESULTS if e]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed", flush=True)
    if failed:
        print(f"tether log: {os.path.join(WORK, 'tether.log')}", file=sys.stderr)
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
