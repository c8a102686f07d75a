#!/usr/bin/env bash
# Prepare the base-layer reference backend: virtualenv at .venv, pinned requirements
# (installed only when requirements.txt changed), and a fresh seeded sqlite database.
# Idempotent; a second run takes about a second.
#
#   tests/django/setup.sh            # DB at tests/django/var/db.sqlite3
#   HABLAR_DJANGO_DB=/tmp/x.sqlite3 tests/django/setup.sh
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.requirements.sha256"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum requirements.txt | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    echo "setup.sh: installing requirements into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" >"$STAMP"
fi

export HABLAR_DJANGO_DB="${HABLAR_DJANGO_DB:-$PWD/var/db.sqlite3}"
mkdir -p "$(dirname "$HABLAR_DJANGO_DB")"
rm -f "$HABLAR_DJANGO_DB"
"$VENV/bin/python" manage.py migrate --verbosity 0
"$VENV/bin/python" manage.py seed
