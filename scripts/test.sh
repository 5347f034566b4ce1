#!/bin/sh
# The README's test command: install build dependencies if missing, build, run the
# whole suite (release build, then an AddressSanitizer + UBSan build of all but the
# 'slow' and 'python' suites, without MPI, whose runtime is not leak-clean, then the libFuzzer harnesses), and print
# one summary line "N passed, N failed, N skipped".
#   PEFT_SANITIZE=0 skips the sanitizer pass, PEFT_FUZZ=0 the fuzzers
#   (PEFT_FUZZ_SECONDS per target, default 20).
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
        run_suite build-asan "--no-suite slow --no-suite python" -Dbuildtype=debugoptimized -Db_sanitize=address,undefined -Dmpi=disabled || exit 1
fi

# ThreadSanitizer: models in concurrent threads (the thread pool, per-thread errors)
if [ "${PEFT_SANITIZE:-1}" != 0 ]; then
    builds="$builds build-tsan"
    TSAN_OPTIONS=halt_on_error=1 run_suite build-tsan "--suite threads" -Dbuildtype=debugoptimized \
        -Db_sanitize=thread -Dblis=disabled -Dmpi=disabled || exit 1
fi

# libFuzzer harnesses (clang): every parser, a bounded time each; PEFT_FUZZ=0 skips
fuzz_ok=0 fuzz_fail=0 fuzz_skip=0
if [ "${PEFT_FUZZ:-1}" != 0 ]; then
    sh tests/fuzz/run.sh "${PEFT_FUZZ_SECONDS:-20}" build-test/include >build-fuzz.log 2>&1
    cat build-fuzz.log
    fuzz_ok=$(grep -c '^fuzz .*: ok' build-fuzz.log)
    fuzz_fail=$(grep -c '^fuzz .*: FAIL' build-fuzz.log)
    fuzz_skip=$(grep -c '^fuzz .*: SKIP' build-fuzz.log)
fi

FUZZ_OK=$fuzz_ok FUZZ_FAIL=$fuzz_fail FUZZ_SKIP=$fuzz_skip python3 - $builds <<'PY'
import json, os, sys
passed, failed = int(os.environ["FUZZ_OK"]), int(os.environ["FUZZ_FAIL"])
skipped = int(os.environ["FUZZ_SKIP"])
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
