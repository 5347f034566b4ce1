#!/bin/sh
# The checked-in Rust bindings (rust/peft-sys/src/bindings.rs) are what bindgen makes of
# the public headers now: a header change must come with regenerated bindings.
# Usage: test_rust_bindings.sh SRC_ROOT BUILD_DIR. Exit 0 pass, 1 fail, 77 skip.
set -u
SRC=$1
BUILD=$2
command -v bindgen >/dev/null 2>&1 || { echo "skip: no bindgen (apt-get install bindgen)"; exit 77; }
T=$(mktemp -d /tmp/peft-bindgen-XXXXXX)
trap 'rm -rf "$T"' EXIT
sh "$SRC/rust/peft-sys/regenerate.sh" "$BUILD" "$T/bindings.rs" || { echo "FAIL: bindgen"; exit 1; }
diff -u "$SRC/rust/peft-sys/src/bindings.rs" "$T/bindings.rs" || {
    echo "FAIL: rust/peft-sys/src/bindings.rs is stale: run rust/peft-sys/regenerate.sh"; exit 1; }
grep -q 'pub fn peft_model_open' "$T/bindings.rs" && grep -q 'pub fn peft_step' "$T/bindings.rs" || {
    echo "FAIL: bindings lack the core functions"; exit 1; }
echo "ok: Rust bindings match the headers"
