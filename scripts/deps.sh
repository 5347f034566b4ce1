#!/bin/sh
# Install what building and testing libpeft needs on Debian (bookworm or later),
# only when something is missing. Run as root, or with sudo available.
set -eu
need=""
command -v meson >/dev/null 2>&1 || need="$need meson"
command -v ninja >/dev/null 2>&1 || need="$need ninja-build"
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v c++ >/dev/null 2>&1 || need="$need g++"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v nm >/dev/null 2>&1 || need="$need binutils"
command -v clang >/dev/null 2>&1 || need="$need clang"  # the libFuzzer harnesses
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"  # the CLI under memcheck
# Rust bindings (rust/): Debian's cargo, offline; bindgen checks the checked-in bindings
command -v cargo >/dev/null 2>&1 || need="$need cargo"
command -v bindgen >/dev/null 2>&1 || need="$need bindgen"
command -v abidiff >/dev/null 2>&1 || need="$need abigail-tools"  # the ABI baseline check
# numpy for /usr/bin/python3: tests/gguf_write.py (quantized GGUF test models)
/usr/bin/python3 -c "import numpy" >/dev/null 2>&1 || need="$need python3-numpy"
# Debian packaging (debian/, tests/test_deb.sh)
command -v dpkg-buildpackage >/dev/null 2>&1 || need="$need dpkg-dev"
command -v dh >/dev/null 2>&1 || need="$need debhelper"
command -v lintian >/dev/null 2>&1 || need="$need lintian"
# Open MPI: the data-parallel mode of peft train (mpirun -np N peft train ...)
command -v mpicc >/dev/null 2>&1 || [ -n "${PEFT_NO_MPI:-}" ] || need="$need libopenmpi-dev"
command -v mpirun >/dev/null 2>&1 || [ -n "${PEFT_NO_MPI:-}" ] || need="$need openmpi-bin"
# optional: BLIS for the blis backend (the build works without it)
[ -e /usr/include/blis.h ] || [ -e /usr/include/x86_64-linux-gnu/blis.h ] || [ -n "${PEFT_NO_BLIS:-}" ] ||
    need="$need libblis-dev"
[ -z "$need" ] && exit 0
echo "scripts/deps.sh: installing:$need" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $need
