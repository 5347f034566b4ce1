#!/bin/sh
# The library's ABI against the committed baseline (tests/abi/libpeft.so.0.abi, libabigail's
# abidw dump of the public types and functions): a removed function or a changed one (a
# parameter type, a struct whose layout moved) fails; added functions are compatible and are
# reported. Appending a field to a versioned options struct is compatible by the library's
# conventions but shows as a change: review it and rewrite the baseline (update.sh). Needs debug info: the release build skips, the sanitizer build (-g) runs it.
# Usage: test_abi.sh LIBRARY SRC_ROOT BUILD_DIR. Exit 0 pass, 1 fail, 77 skip.
# After a deliberate, soname-bumping change: tests/abi/update.sh BUILD_DIR.
set -u
LIB=$1
SRC=$2
BUILD=$3
command -v abidw >/dev/null 2>&1 && command -v abidiff >/dev/null 2>&1 ||
    { echo "skip: no abidw/abidiff (apt-get install abigail-tools)"; exit 77; }
readelf -S "$LIB" | grep -q '\.debug_info' || { echo "skip: $LIB has no debug info (a -g build runs this)"; exit 77; }
T=$(mktemp -d /tmp/peft-abi-XXXXXX)
trap 'rm -rf "$T"' EXIT
abidw --headers-dir "$SRC/include/peft" --headers-dir "$BUILD/include/peft" --drop-private-types \
    --no-corpus-path --no-comp-dir-path --out-file "$T/now.abi" "$LIB" || { echo "FAIL: abidw"; exit 1; }
grep -q 'peft_step' "$T/now.abi" || { echo "FAIL: the dump lacks peft_step"; exit 1; }
abidiff "$SRC/tests/abi/libpeft.so.0.abi" "$T/now.abi" >"$T/report" 2>&1
rc=$?
cat "$T/report"
[ $((rc & 3)) -eq 0 ] || { echo "FAIL: abidiff failed (exit $rc)"; exit 1; }
# "Functions changes summary: R Removed, C Changed (...), A Added functions" and the same for variables
bad=$(sed -n 's/^\(Functions\|Variables\) changes summary: \([0-9]*\) Removed, \([0-9]*\) Changed.*/\2 \3/p' "$T/report" |
    awk '{s += $1 + $2} END {print s + 0}')
if [ $((rc & 8)) -ne 0 ] || [ "$bad" -ne 0 ]; then
    echo "FAIL: ABI change against tests/abi/libpeft.so.0.abi (abidiff exit $rc): removed or changed functions"
    echo "(appending to a versioned options struct is allowed: review, then tests/abi/update.sh BUILD_DIR)"
    exit 1
fi
[ $((rc & 4)) -ne 0 ] && echo "compatible ABI changes (additions) since the baseline"
echo "ok: ABI compatible with the baseline"
