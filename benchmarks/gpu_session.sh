#!/usr/bin/env bash
# Every GPU check of the engine and CUDA paths, as few device calls (prepare with gpu_session_prepare.sh first).
# Each part logs every command with its exit code and seconds to $OUT/PART.log and packs what it wrote (reports,
# manifests, layer tables; not engines or ONNX files) into $OUT/PART.tar.gz: the device tool brings back at most 8 files.
#
#   bash benchmarks/gpu_session.sh cuda      # carry .whl .gl/a: doctor, pytest -m gpu, validate/bench on CUDA (UNet,
#                                            # FCN-8s, the 3D UNet), gpu.py without torch.compile; leaves half A of
#                                            # TensorRT-RTX in /tmp
#   bash benchmarks/gpu_session.sh rtx       # carry .whl .gl/b, at once after cuda: TensorRT-RTX builds of UNet and
#                                            # FCN-8s (4-D) and the 3D UNet (5-D profiles) at fp32/fp16/int8, timing
#                                            # cache, layer tables, the runner's refusal where the GPU is not one it
#                                            # runs on, pipeline --engine-lib
#   bash benchmarks/gpu_session.sh stream    # carry .whl .whl-stream: streamed predict of an 8192^2 TIFF on the GPU
#                                            # torch runner, fp32 and fp16, masks compared
#   bash benchmarks/gpu_session.sh compile   # carry .whl: gpu.py with torch.compile max-autotune for UNet (minutes)
#
# A failing step is logged and the next one runs: one call should bring back every answer it can.
# DRY_RUN=1 runs a part on a machine without a GPU (rtx: without the TensorRT-RTX library): every step runs and the
# CUDA ones fail in one line each, so a changed option or a typo shows here, not in the GPU's few minutes.
set -uo pipefail
part=${1:?usage: gpu_session.sh cuda|rtx|stream|compile}
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-session-out}
work=${GPU_SESSION_WORK:-/tmp/gpu-session}/$part
half_a=${RTX_HALF_A:-/tmp/rtx.xz.part-a}  # where part cuda leaves half A for part rtx
mkdir -p "$OUT" "$work"
log="$OUT/$part.log"
: > "$log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "$*" | tee -a "$log"; }
run() {  # run CMD...: log it, its output, its exit code and its seconds; never stop the part
    say "== $* ($(date -u +%H:%M:%S))"
    local t0=$SECONDS
    "$@" 2>&1 | tee -a "$log"
    say "-- exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}
dunet() { "$PY" -m deploy_unet.cli "$@"; }
pack() { tar czf "$OUT/$part.tar.gz" -C "$work" --exclude='*.engine' --exclude='*.onnx' --exclude='*.tif' \
    --exclude='*.zarr' . && say "packed $OUT/$part.tar.gz"; }
trap pack EXIT

for wheels in .whl .whl-stream; do
    if compgen -G "$wheels/*.whl" > /dev/null; then
        run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$wheels"/*.whl
    fi
done
export PYTHONPATH="$PYTHONPATH:/tmp/site"
ck_unet=models/unet_synthetic.pt
ck_fcn=models/fcn8s_synthetic.pt
ck_unet3d=models/unet3d_synthetic.pt

case "$part" in
cuda)
    if [ -f .gl/a/rtx.xz.part-a ]; then cp .gl/a/rtx.xz.part-a "$half_a" && say "half A of TensorRT-RTX left in $half_a"; fi
    run nvidia-smi
    run dunet doctor
    dunet doctor --json > "$work/doctor.json" 2>> "$log"
    run "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider --junitxml "$work/pytest-gpu.xml" tests
    run dunet export --checkpoint "$ck_unet" --height 512 --width 512 -o "$work/unet.onnx"
    run dunet validate "$ck_unet" --reference "$work/unet.onnx" --ref-backend onnxruntime --device cuda -n 8 \
        --json "$work/validate-cuda-fp32.json"
    run dunet validate "$ck_unet" --reference "$work/unet.onnx" --ref-backend onnxruntime --device cuda -n 8 \
        --torch-precision fp16 --channels-last --cuda-graph --json "$work/validate-cuda-fp16-graph.json"
    for mode in "" "--torch-precision fp16 --channels-last" "--torch-precision fp16 --channels-last --cuda-graph"; do
        for output in logits mask; do
            name=$(echo "bench $mode $output" | tr -s ' -' '_')
            # shellcheck disable=SC2086  # $mode is a list of options
            run dunet bench "$ck_unet" "$ck_fcn" --device cuda --batch 1,8 --size 512x512 --iters 100 --output "$output" \
                $mode --json "$work/$name.json" --markdown "$work/$name.md"
        done
    done
    # The 3D UNet on CUDA against ORT on the CPU (gpu.py below times it at 128^3).
    run dunet export --checkpoint "$ck_unet3d" --size 64x64x64 -o "$work/unet3d.onnx"
    run dunet validate "$ck_unet3d" --reference "$work/unet3d.onnx" --ref-backend onnxruntime --device cuda -n 2 \
        --json "$work/validate-cuda-unet3d-fp32.json"
    run dunet validate "$ck_unet3d" --reference "$work/unet3d.onnx" --ref-backend onnxruntime --device cuda -n 2 \
        --torch-precision fp16 --channels-last --cuda-graph --json "$work/validate-cuda-unet3d-fp16-graph.json"
    run "$PY" benchmarks/gpu.py --skip-compile --out "$work/gpu.md"
    ;;
stream)
    # Streamed large-image predict on the GPU torch runner: an 8192x8192 tiled TIFF, fp32 and fp16, masks compared.
    run "$PY" benchmarks/gpu_stream_check.py make "$work/big.tif" --size 8192
    for mode in "fp32" "fp16 --channels-last --cuda-graph"; do
        # shellcheck disable=SC2086  # the options after the precision are a list
        run dunet predict "$ck_unet" "$work/big.tif" -o "$work/stream-${mode%% *}" --backend torch --device cuda \
            --stream --mask-format tiff --window 512 --sw-batch 8 --torch-precision $mode
    done
    run "$PY" benchmarks/gpu_stream_check.py compare "$work/stream-fp32/big.mask.tif" "$work/stream-fp16/big.mask.tif"
    ;;
rtx)
    if [ -n "${DRY_RUN:-}" ]; then
        say "DRY_RUN: TensorRT-RTX not unpacked; its steps fail in one line each"
    elif [ ! -f "$half_a" ] || [ ! -f .gl/b/rtx.xz.part-b ]; then
        say "error: TensorRT-RTX halves missing ($half_a from part cuda carrying .gl/a, .gl/b/rtx.xz.part-b carried now); run gpu_session_prepare.sh here, then part cuda and part rtx at once on one warm machine"
        exit 2
    else
        lib=/tmp/rtx/tensorrt_rtx_libs
        mkdir -p "$lib"
        cat "$half_a" .gl/b/rtx.xz.part-b | xz -dc > "$lib/libtensorrt_rtx.so.1"
        echo "$(cat .gl/b/libtensorrt_rtx.so.1.sha256)  $lib/libtensorrt_rtx.so.1" | sha256sum -c | tee -a "$log" || exit 2
        xz -dc .gl/b/libtensorrt_onnxparser_rtx.so.1.xz > "$lib/libtensorrt_onnxparser_rtx.so.1"
        cp .gl/b/tensorrt_rtx_libs/__init__.py "$lib/"
        run "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/rtx .gl/b/tensorrt_rtx_cu13_bindings-*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/rtx"
    fi
    run dunet doctor
    run "$PY" -m pytest -rs -q -p no:cacheprovider --junitxml "$work/pytest-rtx.xml" tests/test_tensorrt_rtx_gpu.py
    cache="$work/rtx.timing.cache"
    for arch in unet fcn8s; do
        ck=models/${arch}_synthetic.pt
        run dunet export --checkpoint "$ck" --height 512 --width 512 -o "$work/$arch.fp32.onnx"
        # a small accuracy gate here: validate and the pipeline below measure accuracy properly
        run dunet quantize "$work/$arch.fp32.onnx" --precision fp16 --eval-samples 8 -o "$work/$arch.fp16.onnx"
        run dunet quantize "$work/$arch.fp32.onnx" --precision int8 --target tensorrt --calib-samples 32 --eval-samples 8 \
            -o "$work/$arch.int8.onnx"
        for precision in fp32 fp16 int8; do
            run dunet build-engine "$work/$arch.$precision.onnx" --engine-lib tensorrt-rtx -o "$work/$arch.$precision.engine" \
                --timing-cache "$cache" --layer-info "$work/$arch.$precision.layers.txt" --verbose
            say "timing cache: $(stat -c %s "$cache" 2>/dev/null || echo none) bytes"
        done
    done
    # 5-D profiles: the 3D UNet exported at 64^3, built for batch 1..2 and D, H, W up to 128.
    run dunet export --checkpoint "$ck_unet3d" --size 64x64x64 -o "$work/unet3d.fp32.onnx"
    run dunet quantize "$work/unet3d.fp32.onnx" --precision fp16 --eval-samples 2 -o "$work/unet3d.fp16.onnx"
    run dunet quantize "$work/unet3d.fp32.onnx" --precision int8 --target tensorrt --calib-samples 8 --eval-samples 2 \
        -o "$work/unet3d.int8.onnx"
    for precision in fp32 fp16 int8; do
        run dunet build-engine "$work/unet3d.$precision.onnx" --engine-lib tensorrt-rtx -o "$work/unet3d.$precision.engine" \
            --max-shape 2x1x128x128x128 --timing-cache "$cache" --layer-info "$work/unet3d.$precision.layers.txt" --verbose
    done
    # A second build of the same ONNX reads the cache the nine builds above wrote and merged.
    run dunet build-engine "$work/unet.fp32.onnx" --engine-lib tensorrt-rtx -o "$work/unet.fp32.again.engine" \
        --timing-cache "$cache"
    "$PY" - "$work" <<'EOF' 2>&1 | tee -a "$log"
import json, pathlib, sys
for manifest in sorted(pathlib.Path(sys.argv[1]).glob("*.engine.json")):
    m = json.loads(manifest.read_text())
    print(manifest.name, m["library"], m["tensorrt_version"], m["precision"], "build", m["build"]["seconds"], "s",
          "runs_on", m["runs_on"], "layers", json.dumps(m.get("layers")))
EOF
    run dunet bench "$work/unet.fp32.engine" --batch 1 --size 512x512 --iters 20 --json "$work/bench-rtx-engine.json"
    run dunet validate "$work/unet.int8.engine" --reference "$ck_unet" -n 4 --json "$work/validate-rtx-int8.json"
    run dunet pipeline --arch unet --engine-lib tensorrt-rtx -o "$work/pipeline" --iters 20
    ;;
compile)
    run "$PY" benchmarks/gpu.py --archs unet --out "$work/gpu-compile.md"
    ;;
*)
    say "error: unknown part '$part'; choose cuda, rtx, stream or compile"
    exit 2
    ;;
esac
