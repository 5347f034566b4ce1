#!/bin/sh
# Each public header compiles alone, as C11 and as C++11, warnings as errors.
# Usage: test_headers.sh SRC_INCLUDE BUILD_INCLUDE
set -u
SRC_INC=$1
BUILD_INC=$2
CC=${CC:-cc}
CXX=${CXX:-c++}
T=$(mktemp -d /tmp/peft-hdr-XXXXXX)
trap 'rm -rf "$T"' EXIT
status=0
for h in peft/peft.h peft/backend.h peft/version.h; do
    printf '#include <%s>\nint peft_header_test_dummy;\n' "$h" >"$T/t.c"
    if ! $CC -std=c11 -Wall -Wextra -Wpedantic -Werror -I"$SRC_INC" -I"$BUILD_INC" -c "$T/t.c" -o "$T/t.o"; then
        echo "FAIL: $h does not compile alone as C11"; status=1
    fi
    cp "$T/t.c" "$T/t.cpp"
    if command -v "$CXX" >/dev/null 2>&1; then
        if ! $CXX -std=c++11 -Wall -Wextra -Wpedantic -Werror -I"$SRC_INC" -I"$BUILD_INC" -c "$T/t.cpp" -o "$T/t.o"; then
            echo "FAIL: $h does not compile alone as C++11"; status=1
        fi
    fi
done
[ $status -eq 0 ] && echo "ok: headers compile alone (C11, C++11)"
exit $status
