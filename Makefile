# Two commands are the contract (README): `make demo` and `make test`. Both create .venv on first
# use and do nothing extra while it is current (stamp files track requirements and vpr_msgs).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export VPR_ROS_CACHE ?= $(abspath runs/cache/runtimes)
DATASET ?=
ARGS ?=

.PHONY: setup demo test benchmark train-nordland clean

setup: $(VENV)/.msgs-stamp

$(VENV)/.deps-stamp: requirements.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (install Python 3.11 or run make PYTHON=python3)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.msgs-stamp: $(VENV)/.deps-stamp tools/build_msgs.sh $(wildcard vpr_msgs/*.txt vpr_msgs/*.xml vpr_msgs/msg/* vpr_msgs/srv/*)
	tools/build_msgs.sh $(VENV)
	@touch $@

demo: setup
	$(PY) -m offline_eval.demo $(if $(DATASET),--dataset $(DATASET)) $(ARGS)

test: setup
	$(PY) -m pytest tests -q $(ARGS)

benchmark: setup
	$(PY) -m offline_eval.benchmark $(or $(DATASET),../shared/datasets/corridor) $(ARGS)

# Issue #9's measurement: train (a) ranking, (b) classification, (c) whitening on Nordland's training
# stretch, then Recall@1/5 on the test stretch [2700, 3576) (never read in training) beside the untrained
# models and raw pixels, and on corridor (never trained on).
NORDLAND ?= ../shared/datasets/nordland_summer_winter_64x32
TRAINED  := nordland_spatial_ranking nordland_spatial_ranking_identity nordland_spatial_classification \
            nordland_spatial_whitening
train-nordland: setup
	for t in $(TRAINED); do $(PY) -m vpr_core.cli train --config config/train/$$t.yaml progress=false || exit 1; done
	$(PY) -m offline_eval.benchmark $(NORDLAND) --segment 2700:3576 --paths raw --out runs/trained-nordland-test \
	  --zoo config/default.yaml config/spatial_untrained.yaml $(foreach t,$(TRAINED),runs/train/$(t)/model.yaml)
	$(PY) -m offline_eval.benchmark ../shared/datasets/corridor --paths raw --out runs/trained-corridor \
	  --zoo config/default.yaml config/spatial_untrained.yaml $(foreach t,$(TRAINED),runs/train/$(t)/model.yaml)

clean:
	rm -rf $(VENV) build runs
