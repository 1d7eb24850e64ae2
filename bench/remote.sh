#!/usr/bin/env bash
# Runs `vyre-uring bench` on a machine where nothing can be installed from outside:
# liburing from the .debs in .debs/ (unpacked, not installed), vyre_uring built from
# this checkout into /tmp/site with the Cython and setuptools already there.
#
#   OUT=/some/folder bash bench/remote.sh --workers sweep     # from the repository root
#
# Arguments go to `vyre-uring bench`. With OUT set, the table, the JSON of every run
# and the build log are written there (bench.txt, bench.json, build.log).
set -euo pipefail

PYTHON=${PYTHON:-python3}
SITE=/tmp/site
LIBURING=/tmp/liburing

if [[ ! -f pyproject.toml || ! -d vyre_uring/bench ]]; then
    echo "remote.sh: run it from the repository root" >&2
    exit 2
fi
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
fi

# liburing: unpacked where it can be found through the usual variables (the harness
# searches CPATH, C_INCLUDE_PATH, then /usr/include, and says which it used).
shopt -s nullglob
debs=(.debs/*.deb)
if (( ${#debs[@]} )); then
    rm -rf "$LIBURING"
    mkdir -p "$LIBURING"
    for deb in "${debs[@]}"; do
        if command -v dpkg >/dev/null; then
            dpkg -x "$deb" "$LIBURING"
        else                    # a .deb is an ar archive holding data.tar.*
            member=$(ar t "$deb" | grep '^data\.tar')
            ar p "$deb" "$member" >"/tmp/$member"
            tar -xf "/tmp/$member" -C "$LIBURING"
            rm -f "/tmp/$member"
        fi
    done
    libdir=$(dirname "$(find "$LIBURING" -name 'liburing.so*' -print -quit)")
    export C_INCLUDE_PATH="$LIBURING/usr/include${C_INCLUDE_PATH:+:$C_INCLUDE_PATH}"
    export LIBRARY_PATH="$libdir${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "remote.sh: liburing unpacked from ${debs[*]} into $LIBURING"
else
    echo "remote.sh: no .debs/*.deb here; the system's liburing, if any, is used"
fi

# vyre_uring, built from this checkout (no index: the build requirements must be
# installed already, or their wheels be in .whl/, which is installed first, with the
# wheels of any contenders the machine lacks).
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/build-deps "${wheels[@]}"
    export PYTHONPATH="/tmp/build-deps${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import Cython, setuptools" 2>/dev/null; then
    echo "remote.sh: $PYTHON lacks Cython or setuptools, needed to build vyre_uring" >&2
    exit 1
fi
rm -rf "$SITE"
log=${OUT:+$OUT/build.log}
log=${log:-/tmp/vyre-build.log}
if ! "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index --target "$SITE" . \
        >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "remote.sh: building vyre_uring failed (log: $log)" >&2
    exit 1
fi
# The wheels of .whl/ stay importable: contenders (aiofiles, fsspec...) come that way.
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# `python -m vyre_uring` would put the working directory first on sys.path, and this
# checkout's vyre_uring has no compiled extension: run the entry point pip wrote
# instead (the same vyre_uring.cli:main), whose folder goes first.
"$PYTHON" - <<EOF || exit 1
import sys
sys.path.pop(0)
import vyre_uring
if not vyre_uring.__file__.startswith("$SITE/"):
    sys.exit(f"remote.sh: vyre_uring imports from {vyre_uring.__file__}, not $SITE")
EOF
if [[ -n "${OUT:-}" ]]; then
    "$PYTHON" "$SITE/bin/vyre-uring" bench "$@" --json "$OUT/bench.json" \
        | tee "$OUT/bench.txt"
else
    "$PYTHON" "$SITE/bin/vyre-uring" bench "$@"
fi
