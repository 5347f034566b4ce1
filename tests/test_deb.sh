#!/bin/sh
# Build the Debian packages from a copy of the source tree with dpkg-buildpackage, check
# what each holds, run lintian (no errors allowed), and build + run the C example against
# the unpacked libpeft0 + libpeft-dev with pkg-config.
# Usage: test_deb.sh SRC_ROOT. Exit 0 pass, 1 fail, 77 skip (no Debian packaging tools).
set -u
SRC=$1
for t in dpkg-buildpackage dh lintian; do
    command -v $t >/dev/null 2>&1 || { echo "skip: no $t (apt-get install dpkg-dev debhelper lintian)"; exit 77; }
done
(cd "$SRC" && dpkg-checkbuilddeps) || { echo "skip: the build dependencies above are missing (scripts/deps.sh installs them)"; exit 77; }
T=$(mktemp -d /tmp/peft-deb-XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
mkdir "$T/libpeft"
if git -C "$SRC" rev-parse >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -co --exclude-standard | tar -cf - -T -) | tar -xf - -C "$T/libpeft"
else
    (cd "$SRC" && tar --exclude='./build*' --exclude=./out --exclude=./rust/target -cf - .) | tar -xf - -C "$T/libpeft"
fi
[ -f "$T/libpeft/debian/control" ] || fail "no debian/ directory copied"
(cd "$T/libpeft" && DEB_BUILD_OPTIONS="nocheck parallel=2" dpkg-buildpackage -us -uc -b) >"$T/build.log" 2>&1 ||
    { tail -50 "$T/build.log"; fail "dpkg-buildpackage"; }
grep -q "dpkg-gensymbols: warning" "$T/build.log" && { grep -A20 "dpkg-gensymbols: warning" "$T/build.log"; fail "symbols file out of date"; }
v=$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)
for p in libpeft0 libpeft-dev peft-tools; do
    [ -f "$T/${p}_${v}_${arch}.deb" ] || fail "no package $p"
    dpkg-deb -c "$T/${p}_${v}_${arch}.deb" >"$T/$p.list"
done
grep -q '/libpeft\.so\.0\.' "$T/libpeft0.list" || fail "libpeft0 lacks the shared library"
grep -q '/libpeft\.so\.0 ->' "$T/libpeft0.list" || fail "libpeft0 lacks the soname link"
grep -q 'include/peft/peft\.h' "$T/libpeft-dev.list" && grep -q 'pkgconfig/peft\.pc' "$T/libpeft-dev.list" &&
    grep -q '/libpeft\.so -> ' "$T/libpeft-dev.list" && grep -q '/libpeft\.a' "$T/libpeft-dev.list" || fail "libpeft-dev contents"
grep -q 'usr/bin/peft$' "$T/peft-tools.list" && grep -q 'man1/peft\.1' "$T/peft-tools.list" || fail "peft-tools contents"
dpkg-deb -f "$T/libpeft-dev_${v}_${arch}.deb" Depends | grep -q "libpeft0 (= $v)" || fail "libpeft-dev must depend on its libpeft0"
dpkg-deb -I "$T/libpeft0_${v}_${arch}.deb" symbols | grep -q 'peft_step@PEFT_0.1' || fail "no symbols file in libpeft0"
lintian --fail-on error "$T/libpeft_${v}_${arch}.changes" >"$T/lintian.log" 2>&1
rc=$?
cat "$T/lintian.log"
[ $rc -eq 0 ] || fail "lintian reports errors"
# the unpacked packages are a usable SDK: pkg-config finds them, the C example builds and runs
for p in libpeft0 libpeft-dev peft-tools; do dpkg-deb -x "$T/${p}_${v}_${arch}.deb" "$T/root"; done
pc=$(find "$T/root" -name peft.pc)
PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$T/root" pkg-config --cflags --libs peft >"$T/flags" || fail "pkg-config"
# shellcheck disable=SC2046
cc -std=c11 -Wall -o "$T/minimal" "$SRC/examples/c/minimal.c" $(cat "$T/flags") || fail "build against the package"
export LD_LIBRARY_PATH="$(dirname "$pc")/.."
"$T/root/usr/bin/peft" synth --out "$T/tok.bin" --vocab 48 --tokens 4096 --doc-len 32 >/dev/null || fail "packaged peft"
"$T/minimal" "$SRC/tests/data/tiny" "$T/tok.bin" "$T/ad" 30 || fail "example against the package"
echo "ok: libpeft0, libpeft-dev, peft-tools built; lintian: no errors; the example builds against them"
