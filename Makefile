# roadseg: `make demo` runs the whole pipeline, `make test` the test suite.
# Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)
export MPLBACKEND := Agg

.PHONY: demo test test-fast bench lint clean-outputs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

## demo: run the DVC pipeline (synth -> tile -> pretrain -> train -> evaluate -> register;
##       `pipeline repro` is `dvc repro` stage by stage, printing stage i of n and the time left),
##       then predict a region that no stage saw, from the registry's champion: probability COG,
##       centrelines and road network.
demo: $(STAMP)
	pipeline repro
	pipeline predict data/scenes/demo_region.tif -o outputs/demo_region_roads.tif \
		--vectors outputs/demo_region_roads.gpkg --network outputs/demo_region_network.gpkg --overwrite
	@echo "open outputs/demo_region_roads.tif, outputs/demo_region_roads.gpkg (centrelines) and"
	@echo "outputs/demo_region_network.gpkg (road network: edges, nodes) in QGIS"

## test: the whole suite, slow end-to-end tests included
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

## test-fast: skip the slow end-to-end tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## bench: the benchmarks (figures go to BENCHMARKS.md by hand)
bench: $(STAMP)
	$(BIN)/python benchmarks/predict.py --size 4096
	$(BIN)/python benchmarks/worker_exit.py --runs 3
	$(BIN)/python benchmarks/synth.py
	$(BIN)/python benchmarks/lenet_digits.py
	$(BIN)/python benchmarks/precision.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline backbones tests benchmarks
	$(BIN)/ruff format --check pipeline backbones tests benchmarks

clean-outputs:
	rm -rf data/scenes data/chips models metrics plots reports outputs mlflow.db mlartifacts
