#!/bin/sh
# Rewrite the ABI baseline from a build with debug info (-Dbuildtype=debugoptimized or
# -Ddebug=true): at a release, or with a soname bump. Usage: tests/abi/update.sh BUILD_DIR
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$1
abidw --headers-dir "$SRC/include/peft" --headers-dir "$BUILD/include/peft" --drop-private-types \
    --no-corpus-path --no-comp-dir-path --out-file "$SRC/tests/abi/libpeft.so.0.abi" "$BUILD/libpeft.so.0"
