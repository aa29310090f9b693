#!/usr/bin/env bash
# Install the real Label Studio server (for alkit's integration tests and benchmarks) into its
# own venv, never the alkit env, and build a pre-migrated template data dir so each test
# session starts a server in ~5 s instead of ~45 s.
#
#   ALKIT_LS_VENV  where the server venv goes [default: $HOME/.cache/alkit/ls-venv]
#   template:      $ALKIT_LS_VENV/template-data (used by tests/lsserver.py)
# Safe to rerun: an existing venv with the pinned version and an existing template are kept.
set -euo pipefail
LS_VERSION="1.23.2"
VENV="${ALKIT_LS_VENV:-$HOME/.cache/alkit/ls-venv}"
TEMPLATE="$VENV/template-data"
# Must match tests/lsserver.py (test-only credentials for a loopback server).
LS_TEST_TOKEN="alkit-test-token-0123456789abcdef01234567"

have_version() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("label-studio") == "$LS_VERSION" else 1)
PY
}

if ! have_version; then
  start=$(date +%s)
  if ! command -v uv >/dev/null 2>&1; then python3 -m pip install -q uv; fi
  rm -rf "$VENV"
  uv venv -q --python 3.11 "$VENV"
  VIRTUAL_ENV="$VENV" uv pip install -q --compile-bytecode "label-studio==$LS_VERSION"
  echo "install_labelstudio: label-studio $LS_VERSION installed in $VENV in $(( $(date +%s) - start )) s"
fi

if [ ! -f "$TEMPLATE/label_studio.sqlite3" ]; then
  start=$(date +%s)
  rm -rf "$TEMPLATE.tmp" && mkdir -p "$TEMPLATE.tmp"
  env -u USERNAME -u PASSWORD -u HOST -u PORT -u DEBUG \
    LABEL_STUDIO_BASE_DATA_DIR="$TEMPLATE.tmp" \
    LABEL_STUDIO_USERNAME=admin@example.com \
    LABEL_STUDIO_PASSWORD=admin-pass-123 \
    LABEL_STUDIO_USER_TOKEN="$LS_TEST_TOKEN" \
    LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
    LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true \
    SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false \
    LOG_LEVEL=WARNING \
    "$VENV/bin/label-studio" init --quiet >"$TEMPLATE.tmp.log" 2>&1 \
    || { echo "install_labelstudio: label-studio init failed; see $TEMPLATE.tmp.log"; exit 1; }
  rm -rf "$TEMPLATE" && mv "$TEMPLATE.tmp" "$TEMPLATE"
  echo "install_labelstudio: template data dir built in $TEMPLATE in $(( $(date +%s) - start )) s"
fi
echo "install_labelstudio: ok ($VENV)"
