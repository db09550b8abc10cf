# Two entry points, each doing all set-up first (tools/setup_env.sh is a no-op once done):
#   make demo   runs the demo (see README.md for its variables)
#   make test   runs the test suite
PYTHON := .venv/bin/python

.PHONY: setup test demo
setup:
	@bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)
