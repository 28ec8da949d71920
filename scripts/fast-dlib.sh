#!/usr/bin/env bash
# dlib from source, fast at both halves (issue 18): -march=x86-64-v3 (AVX2, FMA: dlib's HOG
# detector) with the system OpenBLAS and LAPACK (the face encoder's matrix products; the
# dlib-bin wheel links no BLAS), without GUI support (no X11). Same version as the dlib-bin
# pin in requirements/base.txt.
#
#   scripts/fast-dlib.sh deps [PYTHON]       apt-get install what building needs (root, Debian)
#   scripts/fast-dlib.sh build DIR [PYTHON]  build the wheel into DIR once; print its path
#   scripts/fast-dlib.sh install PYTHON DIR  build if needed, then put it into PYTHON's
#                                            environment in place of dlib-bin (once)
#
# A build takes 8-10 minutes on 2 cores; DIR/build.txt records its seconds and flags. The
# wheel links libopenblas.so.0 and liblapack.so.3: where it runs needs libopenblas0 and
# liblapack3 (Debian), and a CPU with AVX2: its .dist-info/CPU_FEATURES lists the
# /proc/cpuinfo flags it needs, which the worker checks before it imports dlib.
set -euo pipefail
cd "$(dirname "$0")/.."
MARCH_FLAGS="-march=x86-64-v3 -mtune=generic"
# What x86-64-v3 code needs, as /proc/cpuinfo names them (abm: LZCNT).
CPU_FEATURES="avx avx2 bmi1 bmi2 f16c fma abm movbe xsave cx16 lahf_lm popcnt sse4_1 sse4_2 ssse3"
VERSION=$(sed -n 's/^dlib-bin==\([0-9.]*[0-9]\)\(\.post[0-9]*\)\{0,1\}$/\1/p' requirements/base.txt)
[ -n "$VERSION" ] || { echo "fast-dlib: no dlib-bin pin in requirements/base.txt" >&2; exit 1; }

deps() {
    local need=(build-essential cmake libopenblas-dev liblapack-dev pkg-config)
    # The python building the wheel needs its headers: Debian's python3.11 keeps them in
    # python3.11-dev, the official image ships them.
    if ! "${1:-python3}" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        need+=(python3.11-dev)
    fi
    local missing=()
    for p in "${need[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fast-dlib: installing ${missing[*]} with apt-get" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    else
        echo "fast-dlib: building dlib needs: ${missing[*]} (sudo apt-get install ...)" >&2
        exit 1
    fi
}

wheel_in() { compgen -G "$1/dlib-$VERSION-*.whl" | head -n 1; }

# Copy wheel $1 to $2 with .dist-info/CPU_FEATURES added (and its line in RECORD).
stamp() {
    "$3" - "$1" "$2.part" "$CPU_FEATURES" <<'PY'
import base64, hashlib, sys, zipfile
src, dst, features = sys.argv[1:4]
data = (features + "\n").encode()
digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    info = record.rsplit("/", 1)[0]
    for item in zin.infolist():
        body = zin.read(item)
        if item.filename == record:
            body += f"{info}/CPU_FEATURES,sha256={digest},{len(data)}\n".encode()
        zout.writestr(item, body)
    zout.writestr(f"{info}/CPU_FEATURES", data)
PY
    mv "$2.part" "$2"
}

build() {
    local dir=$1 py=${2:-python3} found start=$SECONDS tmp
    mkdir -p "$dir"
    # A cache, not sources: git ignores it (as pytest does its cache).
    [ -e "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
    found=$(wheel_in "$dir" || true)
    if [ -n "$found" ]; then
        echo "fast-dlib: $found (built before: $(cat "$dir/build.txt" 2>/dev/null))" >&2
        echo "$found"; return 0
    fi
    deps "$py"
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    echo "fast-dlib: building dlib $VERSION ($MARCH_FLAGS, OpenBLAS + LAPACK, no GUI):" \
         "8-10 minutes on 2 cores" >&2
    # DLIB_* variables become cmake -D options (dlib's setup.py); CFLAGS/CXXFLAGS seed
    # CMake's flags. The build dependencies (setuptools, cmake) come as wheels.
    CFLAGS="$MARCH_FLAGS" CXXFLAGS="$MARCH_FLAGS" \
    DLIB_NO_GUI_SUPPORT=ON DLIB_USE_BLAS=ON DLIB_USE_LAPACK=ON DLIB_USE_CUDA=OFF \
    DLIB_LINK_WITH_SQLITE3=OFF \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$py" -m pip wheel --no-cache-dir --no-deps --no-binary dlib -w "$tmp" \
        "dlib==$VERSION" >&2
    found=$(wheel_in "$tmp")
    stamp "$found" "$dir/$(basename "$found")" "$py"
    found=$(wheel_in "$dir")
    printf 'seconds=%d flags="%s" blas=openblas lapack=yes gui=no\n' \
        $((SECONDS - start)) "$MARCH_FLAGS" >"$dir/build.txt"
    echo "fast-dlib: built $found in $((SECONDS - start)) s" >&2
    echo "$found"
}

# dlib (not dlib-bin) of this version, from this script (CPU_FEATURES), linked with BLAS.
installed_fast() {
    "$1" - "$VERSION" 2>/dev/null <<'PY'
import importlib.metadata as md, sys
try:
    md.distribution("dlib-bin")
    sys.exit(1)
except md.PackageNotFoundError:
    pass
dist = md.distribution("dlib")
sys.exit(dist.version != sys.argv[1] or not dist.read_text("CPU_FEATURES"))
PY
}

install() {
    local py=$1 dir=$2 start=$SECONDS wheel
    if installed_fast "$py"; then
        echo "fast-dlib: dlib $VERSION (x86-64-v3, OpenBLAS) is already installed"; return 0
    fi
    wheel=$(build "$dir" "$py")
    # dlib-bin and dlib install the same files: remove the one before adding the other.
    "$py" -m pip uninstall --yes --quiet dlib-bin dlib 2>/dev/null || true
    "$py" -m pip install --quiet --no-deps "$wheel"
    "$py" -c 'import dlib; assert dlib.DLIB_USE_BLAS, "dlib without BLAS"'
    echo "fast-dlib: dlib $VERSION (x86-64-v3, OpenBLAS) installed in $((SECONDS - start)) s" \
         "($(du -h "$wheel" | cut -f1) wheel; make venv after a change to requirements/" \
         "puts dlib-bin back: run make fast-dlib again)"
}

case "${1:-}" in
    deps) deps "${2:-python3}" ;;
    build) [ $# -ge 2 ] || { echo "usage: $0 build DIR [PYTHON]" >&2; exit 2; }
           build "$2" "${3:-python3}" ;;
    install) [ $# -eq 3 ] || { echo "usage: $0 install PYTHON DIR" >&2; exit 2; }
             install "$2" "$3" ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
