#!/usr/bin/env bash
# End-to-end tests with real servers (Tomcat 10, Flask under gunicorn, Redis), all on
# 127.0.0.1. Installs what is missing (Debian packages, pip packages), builds tether, runs
# tests/e2e/e2e.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
[ -x /usr/share/tomcat10/bin/catalina.sh ] || need_apt+=(tomcat10)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || need_apt+=(chromium chromium-driver)
command -v redis-sentinel >/dev/null || need_apt+=(redis-sentinel)
command -v haproxy >/dev/null || need_apt+=(haproxy)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import selenium' 2>/dev/null || python3 -m pip install -q selenium
python3 -c 'import flask, gunicorn' 2>/dev/null || {
  echo "== installing flask gunicorn"
  python3 -m pip install -q flask gunicorn
}
# The packaged Tomcat service (run as the `tomcat` system user) must not hold the ports or
# compete: the tests start their own and stop those by pid. Only that user's is stopped.
pkill -u tomcat -f 'org.apache.catalina.startup.Bootstrap' 2>/dev/null || true

cargo build -q --bin tether
python3 tests/e2e/e2e.py
python3 tests/e2e/e2e_dns.py
python3 tests/e2e/e2e_dashboard.py
python3 tests/e2e/e2e_redis.py
python3 tests/e2e/e2e_proxy_protocol.py
