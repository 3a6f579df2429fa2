#!/usr/bin/env bash
# Run the benchmark suite, one JSON file per benchmark, into OUTDIR.
#
#   benchmarks/run_all.sh OUTDIR [--quick]
#
# Each benchmark runs under its own time limit (BENCH_TIMEOUT seconds, default 900) so that one
# stuck benchmark cannot stop the rest; BENCH_<NAME>_ARGS adds arguments to one benchmark (e.g.
# BENCH_RENDER_ARGS=--quick, BENCH_FIT_LANDMARKS_ARGS="--batch-timeout 100"); a benchmark that fails or times out is reported at the
# end and the script exits non-zero. Benchmarks whose optional dependency is missing (eos-py,
# dlib, mediapipe) are run without it (bench_fit_landmarks) or skipped (bench_detect_fit).
# Needs JAXFACE_DATA (the staged data folder).
set -u
out=${1:?usage: benchmarks/run_all.sh OUTDIR [--quick]}
shift
extra=("$@")
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
limit=${BENCH_TIMEOUT:-900}
mkdir -p "$out"
has() { "$py" -c "import $1" >/dev/null 2>&1; }
failed=()
run() {  # run NAME ARGS...
    local name=$1
    shift
    local var
    var="BENCH_$(echo "${name#bench_}" | tr '[:lower:]' '[:upper:]')_ARGS"
    # shellcheck disable=SC2206  # word splitting of the per-benchmark arguments is wanted
    local own=(${!var:-})
    echo "== $name $* ${own[*]} ($(date -u +%H:%M:%S))" >&2
    if ! timeout "$limit" "$py" "$here/$name.py" --out "$out/$name.json" "${extra[@]}" "$@" \
            "${own[@]}"; then
        failed+=("$name")
    fi
}
run bench_model
run bench_render
lmk_args=()
has eos || lmk_args+=(--no-eos)
has dlib || lmk_args+=(--no-dlib)
run bench_fit_landmarks "${lmk_args[@]}"
if has mediapipe && has dlib; then
    run bench_detect_fit
else
    echo "== bench_detect_fit skipped (needs the detect extra: mediapipe and dlib)" >&2
fi
run bench_fit_photometric
run bench_encoder
if ((${#failed[@]})); then
    echo "failed or timed out: ${failed[*]}" >&2
    exit 1
fi
