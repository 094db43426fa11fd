#!/usr/bin/env bash
# Prepare, on a development machine with pip's index, what benchmarks/gpu_session.sh needs on the GPU machine
# (which reaches no index): the pure-Python packages its image lacks, and TensorRT-RTX 1.7 split to fit the device
# tool's 64 MiB a call. Writes only ignored folders (.whl/, .whl-stream/, .gl/a/, .gl/b/); takes a few minutes
# (xz -9e).
#
#   bash benchmarks/gpu_session_prepare.sh
#
# Then, with the device tool (each call carries the working tree, about 25 MB, plus the folders named):
#   call 1: carry [".whl", ".gl/a"]  command: bash benchmarks/gpu_session.sh cuda
#   call 2: carry [".whl", ".gl/b"]  command: bash benchmarks/gpu_session.sh rtx      (at once: call 1 left half A
#           of libtensorrt_rtx.so.1 in /tmp, which lives only while the machine stays warm, about 30 s)
#   call 3: carry [".whl", ".whl-stream"]  command: bash benchmarks/gpu_session.sh stream
#   call 4, if device time is left: carry [".whl"]  command: bash benchmarks/gpu_session.sh compile
set -euo pipefail
cd "$(dirname "$0")/.."
RTX_VERSION=${RTX_VERSION:-1.7.1.116}
# The project's environment: the versions carried are the ones installed there.
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p .whl .whl-stream .gl/a .gl/b
for dir in .whl .whl-stream .gl; do
    git check-ignore -q "$dir/x" || { echo "error: $dir is not ignored by git; add /$dir/ to .gitignore" >&2; exit 2; }
done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
download() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$1" "${@:2}"; }

# The project's dependencies the device image does not have (their own needs are all there): onnxslim and
# onnxconverter-common for export and fp16 in .whl/; zarr and its codecs for streamed predict (tifffile is there) in
# .whl-stream/, 10 MB carried only by part stream: parts cuda and rtx carry a half of TensorRT-RTX each and stay
# under the device tool's 64 MiB only without them.
installed() {
    local v
    v=$("$PY" -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}')
    [ -n "$v" ] || { echo "error: $1 is not installed for $PY; install the project first (see README) or set PYTHON" >&2; exit 2; }
    echo "$1==$v"
}
rm -f .whl/*.whl
download .whl "$(installed onnxslim)" "$(installed onnxconverter-common)"
rm -f .whl-stream/*.whl
download .whl-stream "$(installed zarr)" "$(installed numcodecs)" "$(installed donfig)" "$(installed google-crc32c)"

# TensorRT-RTX: the bindings wheel as it is; from the libs wheel its package folder, with libtensorrt_rtx.so.1
# (234 MB) as xz -9e in two halves, one per call.
download "$work" "tensorrt-rtx-cu13-libs==$RTX_VERSION" "tensorrt-rtx-cu13-bindings==$RTX_VERSION"
rm -rf .gl/a/* .gl/b/*
cp "$work"/tensorrt_rtx_cu13_bindings-*.whl .gl/b/
"$PY" -m zipfile -e "$work"/tensorrt_rtx_cu13_libs-*.whl "$work/libs"
mkdir -p .gl/b/tensorrt_rtx_libs
cp "$work/libs/tensorrt_rtx_libs/__init__.py" .gl/b/tensorrt_rtx_libs/
xz -9e -T0 -c "$work/libs/tensorrt_rtx_libs/libtensorrt_onnxparser_rtx.so.1" > .gl/b/libtensorrt_onnxparser_rtx.so.1.xz
xz -9e -T0 -c "$work/libs/tensorrt_rtx_libs/libtensorrt_rtx.so.1" > "$work/rtx.xz"
size=$(stat -c %s "$work/rtx.xz")
head -c $((size / 2)) "$work/rtx.xz" > .gl/a/rtx.xz.part-a
tail -c +$((size / 2 + 1)) "$work/rtx.xz" > .gl/b/rtx.xz.part-b
sha256sum "$work/libs/tensorrt_rtx_libs/libtensorrt_rtx.so.1" | awk '{print $1}' > .gl/b/libtensorrt_rtx.so.1.sha256
du -sh .whl .whl-stream .gl/a .gl/b
# What each call carries (the working tree, tracked and untracked-not-ignored files, plus its folders) against the
# device tool's 64 MiB.
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s}')
for call in "cuda .whl .gl/a" "rtx .whl .gl/b" "stream .whl .whl-stream" "compile .whl"; do
    set -- $call
    name=$1; shift
    total=$((tree + $(du -sb "$@" | awk '{s += $1} END {print s}')))
    verdict=$([ "$total" -le $((64 * 1024 * 1024)) ] && echo fits || echo "OVER the limit")
    echo "call $name carries $((total / 1024 / 1024)) MiB of 64: $verdict"
done
