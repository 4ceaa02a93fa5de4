# edgetl: `make demo` installs and runs the whole job offline; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-app.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q -e ".[qnn]" || echo "onnxruntime-qnn does not install here (it needs x86-64 \
		Linux with glibc >= 2.35, or Windows): everything but --format qnn works"
	$(BIN)/python -m pip install -q --no-deps -r requirements-app.txt
	touch $@

demo: install
	$(BIN)/edgetl demo-data $(DEMO)/data --per-class 60 --force
	$(BIN)/edgetl demo-data $(DEMO)/holdout --per-class 25 --seed 1 --force
	$(BIN)/edgetl train $(DEMO)/data --backbone mobilenet_v2 --alpha 0.35 --weights bundled --image-size 96 \
		--epochs 30 --output $(DEMO)/run --force
	$(BIN)/edgetl export $(DEMO)/run --format tflite --format onnx --quantize none --quantize int8-full --force
	$(BIN)/edgetl evaluate $(DEMO)/run/export/*-int8-full-uint8.tflite --data $(DEMO)/holdout \
		--reference $(DEMO)/run --max-drop 0.03 --min-accuracy 0.5 --plots $(DEMO)/plots

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check edgetl tests tools

clean:
	rm -rf $(DEMO) .pytest_cache
