# Two entry points, each doing all set-up first (tools/setup_env.sh is a no-op once done):
#   make demo   runs the demo (see README.md for its variables)
#   make test   runs the test suite
PYTHON := .venv/bin/python

.PHONY: setup test demo
setup:
	@bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

# The demo: by default the tiny random model on demo/example.jpg (checks an installation; its
# labels are meaningless). Real results need trained weights, e.g. CAT-Seg's:
#   make demo CONFIG=configs/catseg_vitb.yaml WEIGHTS=model_base.pth INPUT=photo.jpg VOCAB="cat,sofa"
CONFIG ?= configs/tiny.yaml
WEIGHTS ?=
INPUT ?= demo/example.jpg
VOCAB ?= sky,grass,house,red ball,sun
OUTPUT ?= demo_output

demo: setup
	$(PYTHON) demo/demo.py --config-file $(CONFIG) --input $(INPUT) --vocab "$(VOCAB)" --output $(OUTPUT) \
		$(if $(WEIGHTS),MODEL.WEIGHTS $(WEIGHTS))
