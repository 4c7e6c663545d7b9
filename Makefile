# w2v-multi: environments made on first use, installed with the exact versions locked in
# constraints/<env>.txt, and re-made when pyproject.toml or their lock changes.
#   .venv        torch, jax + flax + optax, tensorflow, numpy 2          constraints/main.txt
#   .venv-mxnet  mxnet 1.9.1, numpy < 1.24 (MXNet's last release)       constraints/mxnet.txt
#   .venv-gpu    CUDA builds of torch, jax and tensorflow (make env-gpu) constraints/gpu.txt
# Variables (override on the command line: `make train BACKEND=jax EPOCHS=1`):
PYTHON        ?= python3.11
MXNET_PYTHON  ?= python3.11
# An extra package index for torch alone, e.g. https://download.pytorch.org/whl/cpu (a CPU
# build, no CUDA libraries) or .../whl/cu126. Empty: the main index's torch, which on Linux
# is a CUDA build. Every other package still comes from the main index.
TORCH_INDEX   ?=
# The torch release `make lock` resolves against (its wheel decides what a machine downloads).
TORCH_VERSION ?= 2.13.0
BACKEND       ?= torch
DEVICE        ?= cpu
# chapter: the chapter's code through the framework's autodiff and optimiser; fast: tuned.
STEP          ?= fast
EPOCHS        ?= 5
QUERY         ?= chip
RUN           ?= runs/$(BACKEND)
TRAIN_ARGS    ?=
PYTEST_ARGS   ?=
# `make bench QUICK=1`: the under-10-minute smoke check. BENCH_ARGS: more benchmarks.run flags
# (--threads N, --allow-dirty, --rounds N). The interpreters may be another checkout's.
QUICK         ?=
BENCH_ARGS    ?=
BENCH_PYTHON       ?= $(VENV)/bin/python
BENCH_MXNET_PYTHON ?= $(MXNET_VENV)/bin/python

VENV       := .venv
MXNET_VENV := .venv-mxnet
GPU_VENV   := .venv-gpu
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
TORCH_FROM := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: train test test-main test-mxnet test-gpu bench bench-corpus env env-gpu lock check-minimums clean-env

train: $(TRAIN_VENV)/.ready
	$(TRAIN_VENV)/bin/w2v train --backend $(BACKEND) --device $(DEVICE) --step $(STEP) --epochs $(EPOCHS) \
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
	W2V_RAN_FILE=$(VENV)/.backends-ran W2V_LOCK_FILE=constraints/main.txt $(REQUIRE_MAIN) \
		$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-mxnet: $(MXNET_VENV)/.ready
	@echo "== tests in $(MXNET_VENV) (mxnet, numpy reference, common/ on numpy 1.23)"
	W2V_RAN_FILE=$(MXNET_VENV)/.backends-ran W2V_LOCK_FILE=constraints/mxnet.txt $(REQUIRE_MXNET) \
		$(MXNET_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# One commit, both steps of every backend of both environments in the same interleaved rounds,
# the chapter's own pipeline (the floor) and gensim beside: benchmarks/results/latest.md.
bench: $(VENV)/.ready $(MXNET_VENV)/.ready
	$(BENCH_PYTHON) -m benchmarks.run --main-python $(BENCH_PYTHON) \
		--mxnet-python $(BENCH_MXNET_PYTHON) $(if $(QUICK),--quick) $(BENCH_ARGS)

# Corpora past PTB (1M-100M tokens) and the data pipeline's scaling: long, and apart from
# `make bench`; corpus_scale.md and pipeline_scaling.md say which commit they measured.
bench-corpus: $(VENV)/.ready $(MXNET_VENV)/.ready
	$(VENV)/bin/python -m benchmarks.pipeline_scaling --sizes 1M 10M 50M
	$(VENV)/bin/python -m benchmarks.corpus_scale --sizes 1M 17M 100M --backends numpy torch jax tf
	$(MXNET_VENV)/bin/python -m benchmarks.corpus_scale --sizes 1M 17M 100M --backends mxnet \
		--no-peer

env: $(VENV)/.ready $(MXNET_VENV)/.ready

# A GPU machine: CUDA torch (the main index's Linux build, or TORCH_INDEX's), jax[cuda12] and
# tensorflow[and-cuda] in one environment, then its tests: `make env-gpu test-gpu`.
env-gpu: $(GPU_VENV)/.ready

test-gpu: $(GPU_VENV)/.ready
	W2V_LOCK_FILE=constraints/gpu.txt $(GPU_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The project is installed editable, so `w2v` runs the working tree. torch goes first, alone,
# so that TORCH_INDEX serves torch and nothing else.
$(VENV)/.ready: pyproject.toml constraints/main.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) -c constraints/main.txt $(TORCH_FROM) torch
	$(VENV)/bin/pip install $(PIP_QUIET) -c constraints/main.txt -e ".[torch,jax,tf,test]"
	touch $@

$(MXNET_VENV)/.ready: pyproject.toml constraints/mxnet.txt
	rm -rf $(MXNET_VENV)
	$(MXNET_PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/pip install $(PIP_QUIET) -c constraints/mxnet.txt -e ".[mxnet,test]"
	touch $@

$(GPU_VENV)/.ready: pyproject.toml constraints/gpu.txt
	rm -rf $(GPU_VENV)
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install $(PIP_QUIET) -c constraints/gpu.txt $(TORCH_FROM) torch
	$(GPU_VENV)/bin/pip install $(PIP_QUIET) -c constraints/gpu.txt -e ".[torch,jax-cuda,tf-cuda,test]"
	touch $@

# Re-resolve every environment to the newest releases pyproject.toml allows and rewrite the
# locks (torch stays at TORCH_VERSION). The GPU lock is resolved against the public index
# alone, as a GPU machine sees it. Then `make test` rebuilds the environments on the new lock.
lock:
	$(PYTHON) constraints/lock.py main --python $(PYTHON) --pin torch==$(TORCH_VERSION)
	$(PYTHON) constraints/lock.py mxnet --python $(MXNET_PYTHON)
	$(PYTHON) constraints/lock.py gpu --python $(PYTHON) --pin torch==$(TORCH_VERSION) --isolated

# Every direct dependency at its lower bound in throwaway environments, then the parity tests:
# proof that pyproject.toml's minimums are real.
check-minimums:
	$(PYTHON) constraints/minimums.py --python $(PYTHON) --mxnet-python $(MXNET_PYTHON)

clean-env:
	rm -rf $(VENV) $(MXNET_VENV) $(GPU_VENV) .venv-minimums .venv-mxnet-minimums
