#!/bin/sh
# The README's test command: install build dependencies if missing, build, run the
# whole suite (release build, then an AddressSanitizer + UBSan build of all but the
# 'slow' suite), and print
# one summary line "N passed, N failed, N skipped".
#   PEFT_SANITIZE=0 skips the sanitizer pass.
set -u
cd "$(dirname "$0")/.."
sh scripts/deps.sh || { echo "dependency installation failed"; exit 1; }

run_suite() { # build-dir, extra meson-test arguments, meson options...
    dir=$1
    targs=$2
    shift 2
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
    fi
    ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { cat "$dir.ninja.log"; return 1; }
    # shellcheck disable=SC2086
    meson test -C "$dir" --print-errorlogs --num-processes 2 $targs || true
}

builds="build-test"
run_suite build-test "" -Dbuildtype=release || exit 1
if [ "${PEFT_SANITIZE:-1}" != 0 ]; then
    builds="$builds build-asan"
    # leak checking needs ptrace, which some sandboxes forbid; ASan still catches memory errors
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_suite build-asan "--no-suite slow --no-suite python" -Dbuildtype=debugoptimized -Db_sanitize=address,undefined || exit 1
fi

python3 - $builds <<'PY'
import json, sys
passed = failed = skipped = 0
for d in sys.argv[1:]:
    for line in open(f"{d}/meson-logs/testlog.json"):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
PY
