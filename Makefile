# edgetl: `make demo` installs and runs the whole job offline; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/edgetl demo-data $(DEMO)/data --force
	$(BIN)/edgetl train $(DEMO)/data --backbone mobilenet_v2 --alpha 0.35 --weights bundled --image-size 96 \
		--epochs 30 --output $(DEMO)/run --force
	$(BIN)/edgetl export $(DEMO)/run --format tflite --format onnx --quantize int8-full --force
	$(BIN)/edgetl evaluate $(DEMO)/run --data $(DEMO)/data --min-accuracy 0.6

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check edgetl tests tools

clean:
	rm -rf $(DEMO) .pytest_cache
