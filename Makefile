# Two commands do everything on a fresh machine:
#   make app    set up, prepare data and checkpoints that are missing, start the chat app
#   make test   set up and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: app test setup setup-dev clean-venv

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

app: setup
	$(PY) -m finetune.prepare_app
	$(VENV)/bin/chainlit run app.py $(CHAINLIT_ARGS)

test: setup-dev
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
