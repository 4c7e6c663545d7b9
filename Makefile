# w2v-multi: two environments, made on first use and re-made when pyproject.toml changes.
#   .venv        torch (CPU wheel by default), jax + flax + optax, tensorflow, numpy 2
#   .venv-mxnet  mxnet 1.9.1, numpy < 1.24 (MXNet's last release needs the old numpy)
# Variables (override on the command line: `make train BACKEND=jax EPOCHS=1`):
PYTHON        ?= python3.11
MXNET_PYTHON  ?= python3.11
# The torch requirement for .venv. On a GPU machine, e.g. TORCH_SPEC='torch==2.13.0'
# with PIP_INDEX_URL pointing at the CUDA wheels, or TORCH_SPEC='torch>=2.13'.
TORCH_SPEC    ?= torch==2.13.0
BACKEND       ?= torch
DEVICE        ?= cpu
EPOCHS        ?= 5
QUERY         ?= chip
RUN           ?= runs/$(BACKEND)
TRAIN_ARGS    ?=
PYTEST_ARGS   ?=

VENV       := .venv
MXNET_VENV := .venv-mxnet
MXNET_BACKENDS := mxnet gluon
# The environment that hosts the chosen backend, so `make train BACKEND=mxnet` just works.
ifneq ($(filter $(BACKEND),$(MXNET_BACKENDS)),)
TRAIN_VENV := $(MXNET_VENV)
else
TRAIN_VENV := $(VENV)
endif
# CI (CI=true) must run every backend: missing ones fail instead of skipping.
ifneq ($(CI),)
REQUIRE_MAIN  := W2V_REQUIRE_BACKENDS=env:main W2V_REQUIRE_DATA=1
REQUIRE_MXNET := W2V_REQUIRE_BACKENDS=env:mxnet W2V_REQUIRE_DATA=1
endif
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: train test test-main test-mxnet bench env clean-env

train: $(TRAIN_VENV)/.ready
	$(TRAIN_VENV)/bin/w2v train --backend $(BACKEND) --device $(DEVICE) --epochs $(EPOCHS) \
		--out $(RUN) --overwrite $(TRAIN_ARGS)
	$(TRAIN_VENV)/bin/w2v similar $(QUERY) -k 3 --run $(RUN) --skip-unknown

test: $(VENV)/.ready $(MXNET_VENV)/.ready
	@status=0; \
	$(MAKE) --no-print-directory test-main || status=1; \
	$(MAKE) --no-print-directory test-mxnet || status=1; \
	echo "== backends: .venv ran [$$(cat $(VENV)/.backends-ran 2>/dev/null)], .venv-mxnet ran [$$(cat $(MXNET_VENV)/.backends-ran 2>/dev/null)]"; \
	exit $$status

test-main: $(VENV)/.ready
	@echo "== tests in $(VENV) (torch, jax, tf, numpy reference; numpy 2)"
	W2V_RAN_FILE=$(VENV)/.backends-ran $(REQUIRE_MAIN) $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-mxnet: $(MXNET_VENV)/.ready
	@echo "== tests in $(MXNET_VENV) (mxnet, numpy reference, common/ on numpy 1.23)"
	W2V_RAN_FILE=$(MXNET_VENV)/.backends-ran $(REQUIRE_MXNET) $(MXNET_VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.ready $(MXNET_VENV)/.ready
	$(VENV)/bin/python -m benchmarks.run --env main
	$(MXNET_VENV)/bin/python -m benchmarks.run --env mxnet

env: $(VENV)/.ready $(MXNET_VENV)/.ready

# The project is installed editable, so `w2v` runs the working tree.
$(VENV)/.ready: pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) "$(TORCH_SPEC)" -e ".[jax,tf,test]"
	touch $@

$(MXNET_VENV)/.ready: pyproject.toml
	rm -rf $(MXNET_VENV)
	$(MXNET_PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/pip install $(PIP_QUIET) -e ".[mxnet,test]"
	touch $@

clean-env:
	rm -rf $(VENV) $(MXNET_VENV)
