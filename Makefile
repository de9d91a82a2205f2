# Two entry points on a fresh machine: `make all` (the whole pipeline on the synthetic benchmark) and
# `make test`. Both bootstrap .venv first. torch is pinned: an unpinned torch pulls GBs of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WSSS := $(BIN)/wsss
RUN ?= runs/default
SEED ?= 0
# Extra options for the chain's stages, e.g. those of a regime of benchmarks/regimes.py:
#   make all CAM_OPTIONS="--backbone efficientnet_lite0 --pretrained imagenet --lr 0.01" SEGMENT_OPTIONS="..."
DATA_OPTIONS ?=
CAM_OPTIONS ?=
SEGMENT_OPTIONS ?=
# The pretrained regime (benchmarks/regimes.py's lite0-imagenet-224): EfficientNet-Lite0 with its offline ImageNet
# weights on 224 px images, learning rates a tenth of the from-scratch ones.
PRETRAINED := --backbone efficientnet_lite0 --pretrained imagenet --crop-size 192 --base-size 224

.PHONY: all all-pretrained venv test reproduce bench bench-throughput clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 torchvision==0.28.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The pipeline, IRN's run_sample.py style: each line one stage reading and writing artifacts in $(RUN).
# CAM inference drops IRN's scale 2.0 here: on this benchmark it measured no gain (CAM mIoU 54.0 with it, 54.1
# without) for twice the time, and `make all` must fit in 10 minutes on 2 CPU cores.
all: $(STAMP)
	$(WSSS) data synth --run $(RUN) --seed $(SEED) $(DATA_OPTIONS)
	$(WSSS) train-cam --run $(RUN) --seed $(SEED) $(CAM_OPTIONS)
	$(WSSS) infer-cam --run $(RUN) --split train --scales 1.0,0.5,1.5
	$(WSSS) evaluate cams --run $(RUN) --split train
	$(WSSS) pseudo-label --run $(RUN) --refine none
	$(WSSS) evaluate pseudo/none --run $(RUN) --split train
	$(WSSS) pseudo-label --run $(RUN) --refine crf
	$(WSSS) evaluate pseudo/crf --run $(RUN) --split train
	$(WSSS) segment --run $(RUN) --labels pseudo --pseudo crf --predict val,train --seed $(SEED) $(SEGMENT_OPTIONS)
	$(WSSS) evaluate segment/pseudo-crf --run $(RUN) --split val
	$(WSSS) report --run $(RUN) --split train
	$(WSSS) summary --run $(RUN)

# A paper's chain on real data with its recipe (recipes/RECIPE.toml; README "Reproduce the papers"), into
# runs/RECIPE unless RUN=DIR is given; DRY_RUN=1 prints the commands instead of running them.
RECIPE ?=
DATA ?=
reproduce: $(STAMP)
	$(if $(and $(RECIPE),$(DATA)),,$(error usage: make reproduce RECIPE=irn-voc DATA=/path/to/VOC2012 [RUN=DIR] [DRY_RUN=1]))
	$(WSSS) reproduce $(RECIPE) $(DATA) --run $(if $(filter command line,$(origin RUN)),$(RUN),runs/$(RECIPE)) $(if $(DRY_RUN),--dry-run)

# `make all` in the pretrained regime, into runs/pretrained unless RUN=DIR (benchmarks/README.md "Pretrained
# regimes" has its numbers; it takes several times as long as `make all`).
all-pretrained: $(STAMP)
	$(MAKE) all RUN=$(if $(filter command line,$(origin RUN)),$(RUN),runs/pretrained) SEED=$(SEED) \
		DATA_OPTIONS="--image-size 224" CAM_OPTIONS="$(PRETRAINED) --lr 0.01" SEGMENT_OPTIONS="$(PRETRAINED) --lr 0.005"

test: $(STAMP)
	$(BIN)/python -m pytest

# Runs `make all` into runs/bench and writes benchmarks/results/pipeline.json and the README table.
bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py --run runs/bench

# Throughput (benchmarks/README.md "Throughput"): where the stages' time goes (and a training step's), CAM inference
# and dense CRF against the reference way, inference options, CAM storage, and how each stage of `make all` scales
# with the number of images. All but train_precision and the last use runs/bench.
bench-throughput: $(STAMP)
	test -f runs/bench/cams/train.h5 || $(MAKE) bench
	$(BIN)/python benchmarks/profile_stages.py --run runs/bench
	$(BIN)/python benchmarks/train_precision.py
	$(BIN)/python benchmarks/infer_cam.py --run runs/bench
	$(BIN)/python benchmarks/inference_options.py --run runs/bench
	$(BIN)/python benchmarks/crf.py --run runs/bench
	$(BIN)/python benchmarks/storage.py --cams runs/bench/cams/train.h5
	$(BIN)/python benchmarks/scaling.py --sizes 500,1000,2000

clean:
	rm -rf runs
