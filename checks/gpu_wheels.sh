#!/usr/bin/env bash
# Fetch the wheels that checks/gpu_check.py installs on a GPU machine without network access.
#
#     bash checks/gpu_wheels.sh [DIR]          # default DIR: gpu-wheels (ignored by git)
#
# The GPU machine's image is assumed to hold Python 3.12 with a CUDA build of PyTorch, accelerate,
# huggingface_hub, tokenizers, safetensors, numpy, pandas, pyarrow, xxhash, pyyaml, psutil and matplotlib.
# This fetches what such an image lacks, at the versions this environment tests with, for Linux x86_64
# (manylinux) and CPython $PYTHON_VERSION, without dependencies (each needed one is named):
#   required: transformers, peft, datasets (+ dill, multiprocess), evaluate
#   optional: trl (the speed benchmark's variant (b)), bitsandbytes (its CUDA build: the 8-bit rows)
# Then it prints the total and fails when over $BUDGET_MIB (default 60: the whole working tree that travels,
# these wheels included, must stay within 64 MiB). When over, bitsandbytes goes first, then trl, each with
# a line saying so; gpu_check.py then skips the 8-bit rows (or variant (b)) and says why.
#
# Environment: PYTHON (default python3; its installed versions are the pins), PYTHON_VERSION (3.12),
# BUDGET_MIB (60), PACKAGES to replace the list (NAME or NAME==VERSION, space-separated).
set -euo pipefail

DIR=${1:-gpu-wheels}
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
BUDGET_MIB=${BUDGET_MIB:-60}
# dropped first when over the budget: the last of these first
OPTIONAL="trl bitsandbytes"
PACKAGES=${PACKAGES:-"transformers peft datasets dill multiprocess evaluate $OPTIONAL"}

# pin each name to the version installed here (what the tests ran with), when it is installed
pinned() {
    local name=$1
    if [[ $name == *"=="* ]]; then echo "$name"; return; fi
    local version
    version=$("$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")
    if [[ -n $version ]]; then echo "$name==$version"; else echo "$name"; fi
}

mkdir -p "$DIR"
for package in $PACKAGES; do
    spec=$(pinned "$package")
    echo "fetching $spec"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$DIR" "$spec"
done

total_mib() { du -cb "$DIR"/*.whl | tail -1 | awk '{printf "%.1f", $1 / 1048576}'; }
over() { awk -v t="$(total_mib)" -v b="$BUDGET_MIB" 'BEGIN { exit !(t > b) }'; }

for package in $(echo "$OPTIONAL" | tr ' ' '\n' | tac); do
    over || break
    echo "over the ${BUDGET_MIB} MiB budget ($(total_mib) MiB): dropping $package" \
         "($( [[ $package == bitsandbytes ]] && echo 'the 8-bit rows will be skipped' || echo 'speed variant (b) will be skipped' ))"
    rm -f "$DIR"/"$package"-*.whl
done

ls -l "$DIR"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $NF}'
echo "total: $(total_mib) MiB in $DIR (budget ${BUDGET_MIB} MiB)"
if over; then
    echo "error: the required wheels alone exceed the budget" >&2
    exit 1
fi
