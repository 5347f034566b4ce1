#!/bin/sh
# Build the libFuzzer harnesses with clang (ASan + UBSan) and run each for a bounded
# time on its committed seed corpus. Prints "fuzz TARGET: ok" or "fuzz TARGET: FAIL" per
# target and exits non-zero on any crash. Usage: tests/fuzz/run.sh [SECONDS] [BUILD_INCLUDE]
set -u
cd "$(dirname "$0")/../.."
SECS=${1:-20}
INC=${2:-build-test/include}
command -v clang >/dev/null 2>&1 || { echo "fuzz: clang not found, skipped"; exit 77; }
OUT=build-fuzz
mkdir -p "$OUT"
SRCS=$(ls lib/*.c lib/ops/*.c backends/cpu/*.c backends/blis/none.c)
CFLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE -Iinclude -I$INC"
status=0
build() { # name, extra flags, harness
    # shellcheck disable=SC2086
    clang $CFLAGS $2 -o "$OUT/$1" "$3" $SRCS -lm -lpthread 2>"$OUT/$1.log" ||
        { tail -5 "$OUT/$1.log"; echo "fuzz $1: SKIP (cannot build: libFuzzer runtime missing?)"; return 1; }
}
run() { # name, corpus dirs...
    name=$1
    shift
    mkdir -p "$OUT/corpus-$name"
    if "$OUT/$name" -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        "$OUT/corpus-$name" "$@" >"$OUT/$name.run.log" 2>&1; then
        echo "fuzz $name: ok ($(grep -o 'Done [0-9]* runs' "$OUT/$name.run.log" | tail -1))"
    else
        echo "fuzz $name: FAIL"
        tail -30 "$OUT/$name.run.log"
        status=1
    fi
}
build json "" tests/fuzz/fuzz_json.c && run json tests/fuzz/corpus/json
build config "" tests/fuzz/fuzz_config.c && run config tests/fuzz/corpus/json
build safetensors "-DFUZZ_SAFETENSORS" tests/fuzz/fuzz_file.c && run safetensors tests/fuzz/corpus/safetensors
build gguf "-DFUZZ_GGUF" tests/fuzz/fuzz_file.c && run gguf tests/fuzz/corpus/gguf
build gguf_lora "-DFUZZ_GGUF_LORA" tests/fuzz/fuzz_file.c && run gguf_lora tests/fuzz/corpus/gguf_lora
build tokenizer "-DFUZZ_TOKENIZER" tests/fuzz/fuzz_file.c && run tokenizer tests/fuzz/corpus/tokenizer
build spm "-DFUZZ_SPM" tests/fuzz/fuzz_file.c && run spm tests/fuzz/corpus/spm
build vocab "-DFUZZ_VOCAB" tests/fuzz/fuzz_file.c && run vocab tests/fuzz/corpus/tokenizer
build chat "" tests/fuzz/fuzz_chat.c && run chat tests/fuzz/corpus/chat
exit $status
