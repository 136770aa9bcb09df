#!/usr/bin/env bash
# CI: build the Debian package with cargo-deb, install it with dpkg, run the installed
# binary on the installed config, remove it again. Needs root (or sudo) for dpkg.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked cargo-deb
fi

started=$SECONDS
# A release build (the benches' smoke run, just before this in .ci/run, shares its
# dependencies' artifacts).
cargo deb
echo "ci-deb: cargo deb took $((SECONDS - started))s"

deb=$(ls -t target/debian/tether_*.deb | head -n 1)
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

if dpkg-query -W tether >/dev/null 2>&1; then
  echo "ci-deb: a tether package is already installed here; not touching it" >&2
  exit 1
fi
cleanup() { $SUDO dpkg --purge tether >/dev/null || true; }
trap cleanup EXIT

$SUDO dpkg -i "$deb"

/usr/bin/tether --version
/usr/bin/tether check -c /etc/tether/tether.toml
getent passwd tether
test -f /usr/lib/systemd/system/tether.service
# The config is a conffile (upgrades keep an operator's edits) that the tether user can read.
dpkg-query -W -f='${Conffiles}\n' tether | grep -q '/etc/tether/tether.toml'
test "$(stat -c %G /etc/tether/tether.toml)" = tether
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /usr/lib/systemd/system/tether.service
fi

$SUDO dpkg --purge tether
trap - EXIT
if [ -e /usr/bin/tether ] || [ -e /etc/tether/tether.toml ]; then
  echo "ci-deb: files left behind after dpkg --purge" >&2
  exit 1
fi
echo "ci-deb: OK in $((SECONDS - started))s"
