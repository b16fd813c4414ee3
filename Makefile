# User-facing targets: demo, test, bench. Each creates .venv on first use and is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# MediaPipe Hands, the peer of bench/bench_mediapipe.py, lives in its own venv (numpy < 2)
MP_VENV := .venv-mediapipe
MP_STAMP := $(MP_VENV)/.installed
MEDIAPIPE := mediapipe==0.10.14

.PHONY: demo test bench lint clean-venv .venv-mediapipe

$(STAMP): requirements.txt setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(MP_STAMP): bench/requirements-mediapipe.txt
	test -x $(MP_VENV)/bin/python || $(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/python -m pip install --quiet -r bench/requirements-mediapipe.txt
	$(MP_VENV)/bin/python -m pip install --quiet --no-deps $(MEDIAPIPE)
	touch $(MP_STAMP)

.venv-mediapipe: $(MP_STAMP)

demo: $(STAMP)
	$(PY) -m training.demo

test: $(STAMP)
	$(PY) -m pytest -q  # includes tests/test_lint.py (ruff)

# The MediaPipe peer is optional: without its venv (no wheel for this Python, no registry) the
# comparison is skipped and said so in bench/results/mediapipe.json; the other benchmarks still run.
bench: $(STAMP)
	$(MAKE) --no-print-directory $(MP_STAMP) || echo "[bench] could not build $(MP_VENV): MediaPipe comparison skipped"
	$(PY) -m bench.run_all

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean-venv:
	rm -rf $(VENV) $(MP_VENV)
