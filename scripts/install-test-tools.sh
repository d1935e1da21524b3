#!/usr/bin/env sh
# Debian tools the test suite uses, installed when missing and when we can (root + apt-get):
#   promtool (package prometheus): validates /metrics output exactly as Prometheus would;
#   espeak-ng: real Arabic speech for the Hamsa simulator's TTS (a synthetic signal otherwise);
#   chromium: the browser softphone test drives Debian's headless Chromium (no downloaded
#   browser); that test fails, rather than skips, when it could have been installed here.
# Takes ~15 s on a fresh Debian machine (about a minute more with chromium). Without root or apt-get it prints what is missing and
# the tests fall back (metrics are still parsed with prometheus-client's own parser).
set -eu
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test tools:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1
    } || echo "warning: could not install$missing; tests use fallbacks"
else
    echo "note: not root or no apt-get; missing test tools:$missing (tests use fallbacks)"
fi
