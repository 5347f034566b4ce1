#!/bin/sh
# The shared library exports exactly the peft_* functions declared PEFT_API in the public
# headers, each in a version node of lib/libpeft.map, and nothing else.
# Usage: test_symbols.sh LIBPEFT_SO SRC_ROOT
set -u
LIB=$1
SRC=$2
T=$(mktemp -d /tmp/peft-sym-XXXXXX)
trap 'rm -rf "$T"' EXIT
nm -D --defined-only "$LIB" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sed 's/@.*//' | grep -v '^PEFT_' | sort -u >"$T/exported"
sed -n 's/^PEFT_API [^(]*[ *]\(peft_[a-z0-9_]*\)(.*/\1/p' "$SRC"/include/peft/*.h | sort -u >"$T/declared"
# continuation declarations: "PEFT_API int peft_x(" may wrap; the regex above needs the '(' on the line
sed -n 's/^ *\(peft_[a-z0-9_]*\);$/\1/p' "$SRC/lib/libpeft.map" | sort -u >"$T/mapped"
status=0
if ! diff -u "$T/declared" "$T/exported"; then echo "FAIL: exported symbols differ from the headers"; status=1; fi
if ! diff -u "$T/declared" "$T/mapped"; then echo "FAIL: lib/libpeft.map differs from the headers"; status=1; fi
# every exported symbol carries a version
if nm -D --defined-only "$LIB" | awk '$2 ~ /^[TDBR]$/ {print $3}' | grep '^peft_' | grep -v '@@PEFT_'; then
    echo "FAIL: unversioned exports"; status=1
fi
n=$(wc -l <"$T/exported")
[ "$n" -gt 10 ] || { echo "FAIL: only $n symbols found"; status=1; }
[ $status -eq 0 ] && echo "ok: $n exported symbols match headers and version script"
exit $status
