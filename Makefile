# `make test`: create .venv when missing, install the package with what the tests need, run pytest.
# `make demo`: the whole pipeline on a built-in audible-video world, on a laptop CPU.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a GPU cluster installs its own torch before `pip install -e .`.
TORCH ?= torch==2.13.0

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68,<81" wheel
	$(PY) -m pip install -q "$(TORCH)" numpy
	# DeepSpeed ships as source and imports torch while building: build it against the torch above.
	$(PY) -m pip install -q --no-build-isolation "deepspeed>=0.15"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/uniform demo --out demo

clean:
	rm -rf $(VENV) .pytest_cache
