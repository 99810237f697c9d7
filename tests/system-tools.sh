#!/usr/bin/env bash
# The system tools the tests run besides what npm installs: shellcheck (lints the shell
# scripts), pg_isready (the Compose health check's own command, run against a real server) and
# pg_basebackup (makes the streaming standbys of the failover tests); both from postgresql-client;
# PgBouncer (the pooler the tests put in front of a real server); PostgreSQL 15's pg_dump and
# psql (real dumps to apply, and the reference a schema file is read by), from postgresql-client-15;
# and openssl (makes the certificates of the TLS tests).
# As root on Debian or Ubuntu this installs what is missing; elsewhere it says how, and fails.
# Usage: bash tests/system-tools.sh    (npm test runs it first)
set -Eeuo pipefail

# usage: missing_tools    (prints the Debian packages that would bring what is missing)
missing_tools() {
  command -v shellcheck >/dev/null 2>&1 || echo shellcheck
  local tool
  for tool in pg_isready pg_basebackup; do
    command -v "$tool" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$tool" >/dev/null || { echo postgresql-client; break; }
  done
  [[ -x /usr/sbin/pgbouncer ]] || command -v pgbouncer >/dev/null 2>&1 || echo pgbouncer
  [[ -x /usr/lib/postgresql/15/bin/pg_dump && -x /usr/lib/postgresql/15/bin/psql ]] || echo postgresql-client-15
  command -v openssl >/dev/null 2>&1 || echo openssl
}

# usage: main
main() {
  local missing=()
  mapfile -t missing < <(missing_tools)
  ((${#missing[@]} == 0)) && return 0
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the tests (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: the tests need ${missing[*]}: sudo apt-get install ${missing[*]} (macOS: brew install shellcheck libpq pgbouncer)" >&2
    return 1
  fi
}

main "$@"
