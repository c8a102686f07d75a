#!/usr/bin/env bash
# Run the base-layer backend under daphne in the foreground (exec: the pid is daphne's,
# so a test can kill and restart it).
#
#   tests/django/run-daphne.sh PORT [REDIS_URL]
# Env: HABLAR_JWT_SECRET (default hablar-dev-secret), HABLAR_DJANGO_DB (default
# var/db.sqlite3, prepared by setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
PORT="${1:?usage: run-daphne.sh PORT [REDIS_URL]}"
export REDIS_URL="${2:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"
export HABLAR_DJANGO_DB="${HABLAR_DJANGO_DB:-$PWD/var/db.sqlite3}"
export DJANGO_SETTINGS_MODULE=hablar_base.settings
exec .venv/bin/daphne -b 127.0.0.1 -p "$PORT" hablar_base.asgi:application
