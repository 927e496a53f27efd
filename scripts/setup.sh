#!/usr/bin/env bash
# Installs everything Ebb's build, tests and demo need on a fresh Debian machine of
# this project's kind. Idempotent: each step is skipped when already satisfied.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The guest target for connectors (RUSTUP_AUTO_INSTALL=0 here: nothing installs it
# implicitly).
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# Debian packages: PostgreSQL for the postgres connector's tests and the demo.
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# Redis for the redis connector's tests.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# RabbitMQ (its management plugin ships with it) for the rabbitmq connector's tests.
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
# MariaDB (server and client) for the mariadb connector's tests.
[ -x /usr/sbin/mariadbd ] && command -v mariadb >/dev/null 2>&1 || need+=(mariadb-server mariadb-client)
# OpenLDAP (server and clients) for the ldap connector's tests.
[ -x /usr/sbin/slapd ] && command -v ldapmodify >/dev/null 2>&1 || need+=(slapd ldap-utils)
# Chromium and its WebDriver for the web console's browser tests.
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || need+=(chromium chromium-driver)
# Python with venv and pip, for the API fuzz pass (schemathesis from PyPI).
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv python3-pip)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
# Node.js and npm, to build the JavaScript connector with jco.
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
