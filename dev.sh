#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv from requirements.lock (pinned, so CI is
# reproducible) the first time, or again when the lock file changes, then runs the command.
#   ./dev.sh train [train.py flags...]   train the default model (duplication task, no download)
#   ./dev.sh test  [pytest args...]      the full test suite (what CI runs)
#   ./dev.sh lint                        ruff check and ruff format --check
#   ./dev.sh notebooks [names...]        re-execute notebooks/*.py into their stored .ipynb
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.lock-stamp
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[dev.sh] creating .venv with $("$PY" --version) from requirements.lock" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
cmd=${1:-help}; shift || true
case "$cmd" in
  train) exec .venv/bin/python train.py "$@" ;;
  test)  exec .venv/bin/python -m pytest -n 2 "$@" ;;
  lint)  .venv/bin/ruff check . && exec .venv/bin/ruff format --check . ;;
  notebooks) exec .venv/bin/python -m tools.refresh_notebooks "$@" ;;
  *) echo "usage: ./dev.sh {train|test|lint|notebooks} [args...]" >&2; exit 2 ;;
esac
