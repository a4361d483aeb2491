#!/usr/bin/env bash
# The CUDA path's checks on a machine with an NVIDIA GPU (issue 24). Nothing here has run on hardware yet:
# the device step is tested on the CPU through its host device, and this script is what remains.
#
# Two halves, because the GPU machine has CUDA and PyTorch but no Rust toolchain:
#
#   benches/gpu_check.sh prepare   on the build machine: builds the release binary and the engine's test
#                                  binary and copies them, with every shared library `ldd` names outside
#                                  the C library, into gpu-carry/ (git-ignored; carry it to the GPU machine)
#   benches/gpu_check.sh run       on the GPU machine, from the repository root, within a few minutes
#
# `run` prints one PASS / FAIL line per check and exits 1 if any check failed.
set -u
CARRY=gpu-carry

prepare() {
    set -e
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
    cargo build --release --bin ailla
    # the lib's unit tests, as one binary: the probe, the product mapping and the NVRTC compile check
    local tests
    tests=$(cargo test --release --lib --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
    rm -rf "$CARRY" && mkdir -p "$CARRY/lib"
    cp "$CARGO_TARGET_DIR/release/ailla" "$CARRY/ailla"
    cp "$tests" "$CARRY/ailla-lib-tests"
    # OpenBLAS, gfortran and friends; the C library and the loader come from the GPU machine itself
    ldd "$CARRY/ailla" "$CARRY/ailla-lib-tests" | awk '/=> \// {print $3}' | sort -u |
        grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' | xargs -r cp -L -t "$CARRY/lib"
    cp -r benches/torch_reference.py "$CARRY/"
    # WikiText-2 (13 MB) for the 42-model pipeline, when this checkout has the shared data
    if [ -d ../shared/data/wikitext-2 ]; then
        cp -r ../shared/data/wikitext-2 "$CARRY/wikitext-2"
    fi
    echo "prepared $CARRY/: $(ls "$CARRY" | tr '\n' ' ')"
}

FAILED=0
report() { # STATUS NAME DETAIL
    printf '%-8s %-42s %s\n' "$1" "$2" "$3"
    [ "$1" = FAIL ] && FAILED=1
    return 0
}

run() {
    [ -x "$CARRY/ailla" ] || { echo "no $CARRY/ailla: run 'benches/gpu_check.sh prepare' on the build machine"; exit 2; }
    # the carried libraries first, then the machine's CUDA (libcuda from the driver, libcublas and
    # libnvrtc from the toolkit or PyTorch's nvidia-* wheels)
    local torch_libs
    torch_libs=$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/*/lib/lib*.so*")})))' 2>/dev/null || true)
    export LD_LIBRARY_PATH="$PWD/$CARRY/lib:${torch_libs}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    export AILLA_REQUIRE_GPU=1
    local ailla="$PWD/$CARRY/ailla" work
    work=$(mktemp -d)

    # 1. the probe finds the driver, cuBLAS, NVRTC and a device
    if "$ailla" env | tee "$work/env.txt" | grep -q '^CUDA .*device(s); driver, cuBLAS and NVRTC found'; then
        report PASS "probe" "$(grep '^CUDA' "$work/env.txt")"
    else
        report FAIL "probe" "$(grep '^CUDA' "$work/env.txt")"
    fi

    # 2. the engine's CUDA unit tests with skips turned into failures: product mapping, cuBLAS products
    #    against the CPU engine (all four transpose cases, 1e-5), NVRTC compile of
    #    every kernel for sm_90 and sm_80, probe
    if timeout 120 "$CARRY/ailla-lib-tests" engine::cuda > "$work/unit.txt" 2>&1; then
        report PASS "unit tests (engine::cuda)" "$(grep 'test result' "$work/unit.txt")"
    else
        report FAIL "unit tests (engine::cuda)" "see $work/unit.txt"
    fi

    # 3. every kernel against the CPU engine on random inputs, forward and backward, relative error ≤ 1e-5
    #    (ailla cuda-check also trains char-small 50 steps on both engines)
    if timeout 180 "$ailla" cuda-check --tolerance 1e-5 > "$work/kernels.txt" 2>&1; then
        report PASS "kernels vs CPU (rel. err. <= 1e-5)" "$(tail -1 "$work/kernels.txt")"
    else
        report FAIL "kernels vs CPU (rel. err. <= 1e-5)" "see $work/kernels.txt"
    fi
    cat "$work/kernels.txt"

    # 4. the training loss after 50 steps on the GPU within 1e-4 of the CPU run (same seed and batches)
    local args=(train --corpus bundled --tokenizer char --steps 50 --batch-size 8 --ctx-len 64 --seed 1)
    timeout 120 "$ailla" --quiet --device cpu "${args[@]}" --out "$work/cpu" > /dev/null 2>&1
    if timeout 120 "$ailla" --quiet --device cuda "${args[@]}" --out "$work/gpu" > "$work/gpu.txt" 2>&1; then
        local verdict
        verdict=$(python3 - "$work/cpu/metrics.jsonl" "$work/gpu/metrics.jsonl" <<'PY'
import json, sys
def last(path):
    rows = [json.loads(l) for l in open(path) if '"train"' in l]
    return [r for r in rows if r.get("kind") == "train"][-1]
cpu, gpu = last(sys.argv[1]), last(sys.argv[2])
diff = abs(cpu["loss"] - gpu["loss"])
print(("PASS" if diff <= 1e-4 and cpu["step"] == gpu["step"] else "FAIL"),
      f"step {gpu['step']}: cpu {cpu['loss']:.6f} gpu {gpu['loss']:.6f} |diff| {diff:.2e}")
PY
        )
        report "${verdict%% *}" "50-step loss, cuda vs cpu (<= 1e-4)" "${verdict#* }"
    else
        report FAIL "50-step loss, cuda vs cpu (<= 1e-4)" "$(tail -3 "$work/gpu.txt")"
    fi

    # 4b. the same under rules: the bundled rules' dial and the copy examples' copy paths, λ per batch;
    #     every step's loss and penalty within 1e-4 (relative) of the CPU run's, and the same λ
    cat > "$work/rules.yaml" <<YAML
corpus: { bundled: { seed: 2024 } }
tokenizer: word
model: { ctx_len: 64, d_model: 64, n_heads: 4, n_layers: 2, d_ff: 256 }
steps: 50
batch_size: 8
seed: 1
locality:
  rules: { file: $PWD/rules/copy-examples.rules }
  schedule: { uniform: { low: 0.0, high: 1.0 } }
YAML
    timeout 180 "$ailla" --quiet --device cpu train "$work/rules.yaml" --out "$work/rules-cpu" > /dev/null 2>&1
    if timeout 120 "$ailla" --quiet --device cuda train "$work/rules.yaml" --out "$work/rules-gpu" \
        > "$work/rules-gpu.txt" 2>&1; then
        local verdict
        verdict=$(python3 - "$work/rules-cpu/metrics.jsonl" "$work/rules-gpu/metrics.jsonl" <<'PY'
import json, sys
def steps(path):
    return [r for r in map(json.loads, open(path)) if r.get("kind") == "train"]
cpu, gpu = steps(sys.argv[1]), steps(sys.argv[2])
worst = max(max(abs(c["loss"] - g["loss"]) / abs(c["loss"]),
                abs(c["penalty"] - g["penalty"]) / max(abs(c["penalty"]), 1e-12)) for c, g in zip(cpu, gpu))
same = len(cpu) == len(gpu) == 50 and all(c["lambda"] == g["lambda"] for c, g in zip(cpu, gpu))
print(("PASS" if same and worst <= 1e-4 else "FAIL"), f"{len(gpu)} steps, worst relative difference {worst:.2e}")
PY
        )
        report "${verdict%% *}" "50 steps under rules, cuda vs cpu (<= 1e-4)" "${verdict#* }"
    else
        report FAIL "50 steps under rules, cuda vs cpu (<= 1e-4)" "$(tail -3 "$work/rules-gpu.txt")"
    fi

    # 5. throughput on the GPU against PyTorch (CUDA) on the three bench configurations
    if timeout 300 "$ailla" --device cuda bench --compare-torch --python python3 \
        --config char-small --config word-wt2 --config aila > "$work/bench.txt" 2>&1; then
        report PASS "bench --device cuda --compare-torch" "see $work/bench.txt"
        cat "$work/bench.txt"
    else
        report FAIL "bench --device cuda --compare-torch" "$(tail -3 "$work/bench.txt")"
    fi
    # 6. the 42-model WikiText pipeline (aila.yaml) on the GPU, timed; the goal is one epoch per model
    #    in under 10 minutes (the pipeline's budget is an eighth of an epoch per word-level model)
    if [ -d "$CARRY/wikitext-2" ]; then
        local started=$SECONDS
        if timeout 600 "$ailla" --quiet --device cuda run pipelines/aila.yaml --data "$CARRY/wikitext-2" \
            --jobs 4 > "$work/aila.txt" 2>&1; then
            report PASS "aila.yaml, 42 models on the GPU" "$((SECONDS - started)) s; see $work/aila.txt"
        else
            report FAIL "aila.yaml, 42 models on the GPU" "$(tail -3 "$work/aila.txt")"
        fi
    else
        report SKIP "aila.yaml, 42 models on the GPU" "no $CARRY/wikitext-2 (prepare without ../shared/data)"
    fi
    echo "outputs in $work"
    exit "$FAILED"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: benches/gpu_check.sh prepare|run"; exit 2 ;;
esac
