#!/usr/bin/env bash
# System tools some tests use, installed when missing (idempotent; nothing when present).
# Run by `make test`; a tool that cannot be installed makes its tests skip, saying why.
set -uo pipefail

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "$(id -u)" = 0 ] || return 1
  apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$@" >/dev/null 2>&1; }
}

# docker-compose.yml is checked by `docker compose config`; this kind of machine has the
# docker client without the compose plugin, so take Debian's docker-compose for the check.
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
   && ! command -v docker-compose >/dev/null 2>&1; then
  apt_install docker-compose || echo "install-test-tools: docker-compose not installed; its test skips"
fi
# The dashboard's tests drive Debian's headless Chromium through Playwright (Playwright's
# own browser download does not reach this network).
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium chromium-driver || echo "install-test-tools: chromium not installed; browser tests skip"
fi
exit 0
