# Every target creates .venv on first use and installs into it: torch 2.13.0 (CPU build) first,
# so that the package's `torch>=` range is already met and pip pulls no multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0

.PHONY: install test train evaluate sweep variants ui optuna-ui report bench faults paper-check search-efficiency mutation clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat  # a path entry: mutmut's copies can shadow it
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

train: $(STAMP)
	$(VENV)/bin/switchsweep train model=switch_dit model.size=tiny data=digits train.steps=300 train.out_dir=runs/train

evaluate: $(STAMP)
	$(VENV)/bin/switchsweep evaluate checkpoint=runs/train/ckpt.pt eval.num_samples=1000

sweep: $(STAMP)
	$(VENV)/bin/switchsweep sweep sweep=design_space

# Every design side by side at equal (short) training, sized for a CPU.
variants: $(STAMP)
	$(VENV)/bin/switchsweep sweep sweep=variants train.steps=150 sweep.eval_every=150

# Dashboards, on this machine only (127.0.0.1). ARGS: e.g. ARGS="sweep.root=/data/runs port=5001".
SWEEP ?= design_space
ui: $(STAMP)
	$(VENV)/bin/switchsweep ui $(ARGS)

optuna-ui: $(STAMP)
	$(VENV)/bin/switchsweep optuna-ui sweep=$(SWEEP) $(ARGS)

report: $(STAMP)
	$(VENV)/bin/switchsweep report sweep=$(SWEEP) $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.moe_kernels
	$(PY) -m benchmarks.step_time
	$(PY) -m benchmarks.eval_throughput
	$(PY) -m benchmarks.sweep_overhead

# Killed workers and a killed driver, survived? (about 8 minutes on 2 cores)
faults: $(STAMP)
	$(PY) -m benchmarks.faults

# The paper's ordering at small scale (about 45 minutes on 2 cores) and the grid-vs-TPE compute ratio (about 25).
paper-check: $(STAMP)
	$(PY) -m benchmarks.paper_check

search-efficiency: $(STAMP)
	$(PY) -m benchmarks.search_efficiency

# Mutation testing of the core modules against the fast suite: not part of `make test`, over an hour on
# 2 cores for all ~2,400 mutants; an interrupted run resumes where it stopped.
mutation: $(STAMP)
	TRITON_INTERPRET=1 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

clean:
	rm -rf runs .pytest_cache mutants
