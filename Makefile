# Two commands on a fresh machine: `make demo` and `make test`. Both set up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint bench clean

setup:
	@tools/setup_env.sh

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(VENV)/bin/hand_pose_demo

lint: setup
	$(PY) -m pytest -q test/test_lint.py

bench: setup
	$(VENV)/bin/hand_pose_bench

clean:
	rm -rf $(VENV) build install log *.egg-info
