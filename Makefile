# Two entry points, each doing all set-up first (tools/setup_env.sh is a no-op once done):
#   make demo   runs the demo (see README.md for its variables)
#   make test   runs the test suite
#   make test-fast  runs the suite without the tests marked slow (a contributor's quick check)
#   make web    starts the web demo (see README.md)
PYTHON := .venv/bin/python

.PHONY: setup test test-fast demo web
setup:
	@bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The demo: CAT-Seg's ViT-B weights (downloaded once into ~/.cache/lmseg, or $LMSEG_CACHE) on a
# CC0 photo shipped with the project. Without network it says which file to put where, then runs
# the offline installation check (configs/tiny.yaml). Any image, vocabulary or model:
#   make demo INPUT=photos/ VOCAB="cat,sofa|couch,floor" [CONFIG=configs/vitb.yaml WEIGHTS=model.pth]
INPUT ?= demo/coffee.jpg
VOCAB ?= cup|mug,coffee,saucer|plate,spoon,table,background
OUTPUT ?= demo_output
CONFIG ?=
WEIGHTS ?=

demo: setup
	$(PYTHON) demo/demo.py --input $(INPUT) --vocab "$(VOCAB)" --output $(OUTPUT) \
		$(if $(CONFIG),--config-file $(CONFIG)) $(if $(WEIGHTS),--weights $(WEIGHTS))

# The web demo on http://127.0.0.1:$(PORT) (demo/app.py), after installing the web extra (Gradio).
# The same model choice as make demo: CONFIG/WEIGHTS, or CAT-Seg's ViT-B downloaded once.
PORT ?= 7860

web: setup
	$(PYTHON) -c "import gradio" 2>/dev/null || $(PYTHON) -m pip install --disable-pip-version-check -e ".[web]"
	$(PYTHON) demo/app.py --port $(PORT) $(if $(CONFIG),--config-file $(CONFIG)) $(if $(WEIGHTS),--weights $(WEIGHTS))
