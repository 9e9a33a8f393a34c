#!/usr/bin/env bash
# Install headless Chromium (Debian's chromium + chromium-driver) for the report's browser test.
#   bash scripts/setup_browser.sh
# Idempotent: does nothing when /usr/bin/chromium exists. Never fails the calling script: when
# Chromium cannot be installed it says why and exits 0 (the browser test then skips with that reason).
set -u

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "[browser] chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "[browser] cannot install chromium: apt-get not found (not a Debian/Ubuntu system); the browser test will skip"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "[browser] cannot install chromium: not root and no passwordless sudo; the browser test will skip"
        exit 0
    fi
fi

echo "[browser] installing chromium and chromium-driver with apt-get (first time: a minute or two)"
export DEBIAN_FRONTEND=noninteractive
LOG="$(mktemp -t setup_browser.XXXXXX 2>/dev/null || echo /dev/null)"
trap '[ "$LOG" = /dev/null ] || rm -f "$LOG"' EXIT
if ! $SUDO apt-get update -qq >"$LOG" 2>&1; then
    echo "[browser] cannot install chromium: 'apt-get update' failed (no access to the package mirror?):"
    tail -n 5 "$LOG" | sed 's/^/[browser]   /'
    exit 0
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >>"$LOG" 2>&1; then
    echo "[browser] cannot install chromium: 'apt-get install chromium chromium-driver' failed:"
    tail -n 5 "$LOG" | sed 's/^/[browser]   /'
    exit 0
fi

if [ -x "$CHROMIUM" ]; then
    echo "[browser] installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
    echo "[browser] apt-get finished but $CHROMIUM is missing; the browser test will skip"
fi
exit 0
