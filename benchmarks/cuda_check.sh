#!/usr/bin/env bash
# The measurements that need a GPU, prepared to run in one call each of a lent GPU machine (the device tool of
# this workplace, whose machines have torch, timm, h5py and typer but not pydensecrf2 and cannot reach PyPI):
#
#   bash benchmarks/cuda_check.sh pipeline           # issue 24: make all on CUDA, the batched walk, the profile
#   bash benchmarks/cuda_check.sh recipes [R1,R2]    # issue 23: recipe_cost.py's hours (default: every recipe,
#                                                    #   VOC's first; 128 training images each)
#
# Each part is meant to fit one call of 10 minutes on an H100 (a guess: it has not run there); the recipes part
# may need two calls, each naming some of the recipes. Before the first call, build the
# wheel the machine lacks, for its Python 3.12, into .whl/ (git-ignored through .git/info/exclude), and name .whl
# in the call's `carry`:
#   PYENV_VERSION=3.12.1 python -m pip wheel --no-deps -w .whl pydensecrf2==1.1
# Files come back in $OUT: log.txt, and per part its results (manifest.json and profile_stages-cuda.json, or
# recipe_cost.json), to be committed as benchmarks/results/*-cuda.json and tabled with the device's name.
# SMALL=1 runs both parts on a CPU at toy sizes (a check of this script, not a measurement); PYTHON=.venv/bin/python
# runs them with this checkout's venv.
set -u
python=${PYTHON:-python3}
part=${1:?usage: cuda_check.sh pipeline|recipes [recipes]}
OUT=${OUT:-/tmp/cuda-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH=$PWD
if ! $python -c "import pydensecrf.densecrf" 2>/dev/null; then  # the device machine: install the carried wheels
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
wsss="$python -m wsss_cli.main"
run=runs/cuda-check
section() { echo "== $1 ($(date +%T))"; }
timed() {
    local start=$SECONDS; "$@"; local status=$?
    echo "-- $((SECONDS - start)) s, status $status: $*"; return $status
}

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
$python -c "from stages.core.tv import torchvision; torchvision(); import torch, timm
gpu = torch.cuda.is_available() and torch.cuda.get_device_name()
print('torch', torch.__version__, 'timm', timm.__version__, 'GPU', gpu)"
command -v make >/dev/null || echo "no make: the pipeline part needs it"

case $part in
pipeline)
    if [ "${SMALL:-}" ]; then data="--num-train 32 --num-val 8 --image-size 64"; else data=""; fi
    rm -rf "$run"
    section "make all, on the device, with its defaults (STAMP= skips the venv: this machine has no PyPI)"
    timed make all STAMP= WSSS="$wsss" RUN="$run" DATA_OPTIONS="$data"
    section "the batched random walk on the device: train-affinity, pseudo-label rw, its evaluation"
    timed $wsss train-affinity --run "$run" && timed $wsss pseudo-label --run "$run" --refine rw \
        && timed $wsss evaluate pseudo/rw --run "$run" --split train
    cp "$run/manifest.json" "$OUT/manifest.json"
    section "where the time goes (benchmarks/profile_stages.py)"
    if [ "${SMALL:-}" ]; then sizes="--images 16 --voc-sized 4 --rounds 1"; else sizes=""; fi
    timed $python benchmarks/profile_stages.py --run "$run" --device auto $sizes \
        && cp benchmarks/results/profile_stages.json "$OUT/profile_stages-cuda.json"
    ;;
recipes)
    # One process per recipe, its results copied as each ends: a call cut by its time limit keeps the finished ones.
    for recipe in $(echo "${2:-irn-voc,seam-voc,ppc-voc,l2g-voc,mcic-voc,l2g-coco,mcic-coco}" | tr , ' '); do
        section "recipe_cost.py $recipe"
        timed $python benchmarks/recipe_cost.py --recipes "$recipe" --images 128 ${SMALL:+--small} \
            && { [ "${SMALL:-}" ] || cp benchmarks/results/recipe_cost.json "$OUT/recipe_cost.json"; }
    done
    ;;
*)
    echo "unknown part $part: pipeline or recipes"; exit 2 ;;
esac
section "done"
