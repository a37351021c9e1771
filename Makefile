# Two commands are the contract (README): `make demo` and `make test`. Both create .venv on first
# use and do nothing extra while it is current (stamp files track requirements and vpr_msgs).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
DATASET ?=
ARGS ?=

.PHONY: setup demo test benchmark clean

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

clean:
	rm -rf $(VENV) build runs
