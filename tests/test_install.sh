#!/bin/sh
# meson install into a staging prefix, then build the C example (and the same file as
# C++, and statically), the Rust crates (example + cargo test) and run the Python example
# against the *installed* library (pkg-config, not the build tree), each training a few
# steps, checking that the loss goes down and that the saved adapter reloads.
# Usage: test_install.sh BUILD_DIR SRC_ROOT
set -u
BUILD=$1
SRC=$2
SHARED=${PEFT_SHARED:-$SRC/../shared}
T=$(mktemp -d /tmp/peft-inst-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
meson install -C "$BUILD" --destdir "$T/stage" --no-rebuild >"$T/install.log" 2>&1 || { cat "$T/install.log"; fail "meson install"; }
pc=$(find "$T/stage" -name peft.pc | head -1)
[ -n "$pc" ] || fail "no peft.pc installed"
lib=$(find "$T/stage" -name 'libpeft.so.0' | head -1)
[ -n "$lib" ] || fail "no libpeft.so.0 (soname) installed"
find "$T/stage" -name 'libpeft.a' | grep -q . || fail "no static library"
find "$T/stage" -name 'libpeft.so' | grep -q . || fail "no development symlink"
for h in peft.h backend.h version.h; do find "$T/stage" -path "*include/peft/$h" | grep -q . || fail "header $h"; done
find "$T/stage" -path '*bin/peft' | grep -q . || fail "peft tool not installed"
soname=$(readelf -d "$lib" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libpeft.so.0" ] || fail "soname is '$soname'"
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$T/stage"
flags=$(pkg-config --cflags --libs peft) || fail "pkg-config"
cc -std=c11 -Wall -Werror -o "$T/minimal" "$SRC/examples/c/minimal.c" $flags || fail "C build against the installed library"
cp "$SRC/examples/c/minimal.c" "$T/minimal.cpp"
c++ -std=c++11 -Wall -o "$T/minimal_cpp" "$T/minimal.cpp" $flags || fail "C++ build against the installed library"
static_libs=$(pkg-config --static --libs-only-l peft | sed 's/-lpeft//') || fail "pkg-config --static"
cc -static-libgcc -o "$T/minimal_static" "$SRC/examples/c/minimal.c" $(pkg-config --cflags peft) "$(dirname "$lib")/libpeft.a" $static_libs -pthread || fail "static link"
export LD_LIBRARY_PATH="$(dirname "$lib")"
ldd "$T/minimal" | grep -q "$(dirname "$lib")/libpeft.so.0" || fail "example does not use the installed library"
"$T/stage/usr/local/bin/peft" synth --out "$T/tok.bin" --vocab 48 --tokens 4096 --doc-len 32 >/dev/null 2>&1 ||
    "$(find "$T/stage" -path '*bin/peft')" synth --out "$T/tok.bin" --vocab 48 --tokens 4096 --doc-len 32 >/dev/null || fail "synth"
for exe in minimal minimal_cpp minimal_static; do
    "$T/$exe" "$SRC/tests/data/tiny" "$T/tok.bin" "$T/ad_$exe" 40 || fail "$exe run"
done

# Python: the pure-Python ctypes package, loading the installed libpeft.so.0
LIBPEFT_PATH=$lib FINETUNE_STEPS=30 python3 "$SRC/python/examples/finetune.py" "$SHARED/models/stories260K" \
    "$SHARED/data/kjv_genesis.txt" "$T/ad_py" >"$T/py.log" 2>&1 || { cat "$T/py.log"; fail "Python example"; }
cat "$T/py.log"
LIBPEFT_PATH=$lib python3 -c "import sys; sys.path.insert(0, '$SRC/python'); import libpeft, os; \
    assert os.path.realpath(libpeft._lib._name) == os.path.realpath('$lib'), libpeft._lib._name" || fail "Python did not load the installed library"

# Rust: peft-sys finds the installed library with pkg-config; offline, no registry crates
if command -v cargo >/dev/null 2>&1; then
    export CARGO_TARGET_DIR="$T/cargo"
    (cd "$SRC/rust" && cargo build --offline --quiet --example finetune) >"$T/cargo.log" 2>&1 || { cat "$T/cargo.log"; fail "cargo build"; }
    ldd "$T/cargo/debug/examples/finetune" | grep -q "$(dirname "$lib")/libpeft.so.0" || fail "the Rust example does not use the installed library"
    "$T/cargo/debug/examples/finetune" "$SRC/tests/data/tiny" "$T/tok.bin" "$T/ad_rust" 40 || fail "Rust example run"
    (cd "$SRC/rust" && PEFT_SHARED="$SHARED" cargo test --offline) >"$T/cargo-test.log" 2>&1 || { cat "$T/cargo-test.log"; fail "cargo test"; }
    grep -E '^test |test result' "$T/cargo-test.log"
    grep -q 'test training_lowers_the_loss_and_the_adapter_reloads ... ok' "$T/cargo-test.log" || fail "cargo test ran no training test"
    rust=", Rust example and cargo test"
else
    echo "cargo not found (apt-get install cargo): the Rust crates were not built" >&2
    exit 1
fi
echo "ok: installed, pkg-config works, C/C++/static/Python examples train and reload$rust"
