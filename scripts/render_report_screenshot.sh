#!/usr/bin/env bash
# Render a cmbunet report's index.html to a PNG with headless Chromium, e.g. to attach the overview page to
# an e-mail or a lab notebook, or to check on a server without a display what a reader will see.
#
#   scripts/render_report_screenshot.sh REPORT_DIR/index.html OUT.png [WIDTH] [HEIGHT]
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 INDEX_HTML OUT_PNG [WIDTH=1280] [HEIGHT=2000]" >&2
    exit 2
fi
index=$1
out=$2
width=${3:-1280}
height=${4:-2000}
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}

if [[ ! -f $index ]]; then
    echo "error: $index: file does not exist" >&2
    exit 2
fi
if [[ -z $chromium ]]; then
    echo "error: no Chromium found; install it (Debian/Ubuntu: apt-get install chromium) or set CHROMIUM=/path/to/chrome" >&2
    exit 2
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
out_abs=$(realpath -m "$out")
mkdir -p "$(dirname "$out_abs")"
tmp_png="$(dirname "$out_abs")/.$(basename "$out_abs").$$.png"   # renamed into place: no half-written PNG

"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --screenshot="$tmp_png" --window-size="${width},${height}" \
    "file://$(realpath "$index")" >/dev/null 2>&1 || { rm -f "$tmp_png"; echo "error: chromium failed to render $index" >&2; exit 1; }
mv -f "$tmp_png" "$out_abs"
echo "screenshot written: $out_abs"
