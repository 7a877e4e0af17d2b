#!/usr/bin/env bash
# Writes the default training corpus: the King James Bible (public domain) as plain text, from
# Debian's bible-kjv package, to data/kjv.txt (about 4.3 MB: a "Book N" heading per chapter, then one
# verse per line, "  N text").
#
#   tools/prepare_data.sh [OUTPUT]     (default: data/kjv.txt at the repository root)
#
# Idempotent: an existing non-empty OUTPUT is kept. The text is written to a temporary file beside
# OUTPUT, checked, flushed to disk and renamed, so an interrupted run never leaves a partial corpus.
# Installs bible-kjv when the `bible` command is missing (Debian/Ubuntu, as root or through sudo).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/kjv.txt}

if [[ -s $out ]]; then
  echo "prepare_data: $out is present ($(wc -c <"$out") bytes)"
  exit 0
fi

if ! command -v bible >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "prepare_data: the 'bible' command is missing; install Debian's bible-kjv package (or give" >&2
    echo "prepare_data: train on a plain-text file of your own instead)" >&2
    exit 1
  fi
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "prepare_data: need root to install bible-kjv; run as root or install it yourself" >&2
      exit 1
    fi
  fi
  echo "prepare_data: installing bible-kjv"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bible-kjv ||
    { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bible-kjv; }
fi

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.tmp.XXXXXX")
trap 'rm -f "$tmp"' EXIT

# -l0: no line wrapping (one verse per line, whatever COLUMNS says), so the text is the same on every
# machine. Run from / because bible looks for its data file in the current folder first. stdin is
# /dev/null so it never waits for input.
(cd / && bible -l0 gen1:1-rev22:21) </dev/null >"$tmp"

size=$(wc -c <"$tmp")
last="The grace of our Lord Jesus Christ be with you all. Amen."
if ((size < 4000000)) || [[ $(head -c 200 "$tmp") != *"In the beginning God created"* ]] ||
  [[ $(tail -n 1 "$tmp") != *"$last"* ]]; then
  echo "prepare_data: 'bible' printed $size bytes that do not look like the whole King James Bible;" >&2
  echo "prepare_data: check the bible-kjv package" >&2
  exit 1
fi

chmod 644 "$tmp"
sync "$tmp" 2>/dev/null || sync
mv -f "$tmp" "$out"
trap - EXIT
echo "prepare_data: wrote $out ($size bytes, the King James Bible from Debian's bible-kjv)"
