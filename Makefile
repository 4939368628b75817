# Every target creates .venv on first use and installs into it: torch 2.13.0 first, from TORCH_INDEX (empty:
# the registry's default build, CUDA on Linux; https://download.pytorch.org/whl/cpu: the CPU build, for
# a machine without a GPU), then the package, every version pinned by constraints.txt (`make lock` writes it
# from this environment, the one `make test` passes in). The byte-code is compiled after pip, on every core
# (pip compiles a file at a time); as with pip, a file that does not compile (torch ships one in a newer
# Python's syntax) is left to the interpreter, not an install failure.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev  # the test tools; cluster nodes install with EXTRAS= (none)

.PHONY: install lock test format train evaluate sweep variants ui optuna-ui report bench faults learning paper-check paired-eval search-efficiency mutation clean \
	gpu-check gpu-wheels cluster-check slurm-check slurm-sweep cluster-account cluster-login cluster-up cluster-down cluster-ui cluster-sweep cluster-prepare

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --upgrade pip
	$(PY) -m pip install -q --no-compile -c constraints.txt torch==$(TORCH_VERSION) $(if $(strip $(TORCH_INDEX)),--index-url $(strip $(TORCH_INDEX)))
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.$(if $(strip $(EXTRAS)),[$(strip $(EXTRAS))])' --config-settings editable_mode=compat  # a path entry: mutmut's copies can shadow it
	@$(PY) -m compileall -qq -j 0 $(VENV)/lib || true
	@touch $(STAMP)

install: $(STAMP)

# constraints.txt from this environment: exact versions, torch without its build label (each machine
# picks its build), and no triton, which torch's CUDA build pins itself.
lock: $(STAMP)
	@{ echo "# Every version a node installs: \`make lock\` writes it from the environment \`make test\` passed in."; \
	  $(PY) -m pip freeze --exclude-editable | sed -e 's/+[a-z0-9.]*$$//' | grep -v -i -e '^triton==' -e '^switchsweep'; } > constraints.txt

# The style holds by itself: lint and format are checked before the tests run (`make format` applies them).
# The fast suite runs on two processes (much of it is single-threaded: Triton's interpreter, small tensors);
# the end-to-end tests after it, on two processes too, a module at a time (its tests share what its fixtures
# start) in the order tests/conftest.py gives: they spend much of their time waiting on Ray, SSH and servers
# starting, which the other process fills. The registry tests wait on the network alone: they run beside
# the end-to-end ones, and either's failure fails the target.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow" -n 2
	$(PY) -m pytest -q -m registry -p no:cacheprovider & registry=$$!; \
	  $(PY) -m pytest -q -m "slow and not registry and not cluster and not slurm" -n 2 --dist loadfile --no-loadscope-reorder --durations=15; e2e=$$?; \
	  wait $$registry; net=$$?; test $$e2e -eq 0 && test $$net -eq 0

# The cluster's own checks (tests/cluster/, docs/tests.md): cluster.yaml's commands over SSH on nodes made here
# (root, sshd, PostgreSQL), a fake autoscaling cluster on an S3 endpoint, a lost head. CI runs them after `make test`.
cluster-check: $(STAMP)
	$(PY) -m pytest -q -m cluster -n 2 --dist loadfile --no-loadscope-reorder --durations=5

# Sweeps on a real Slurm cluster (tests/slurm/): a controller and two nodes made on this machine (root,
# slurm-wlm, munge), a job cut by its time limit and the next resuming it. CI runs it after cluster-check.
slurm-check: $(STAMP)
	$(PY) -m pytest -q -m slurm -p no:cacheprovider --durations=5

# A sweep on your Slurm cluster (docs/cluster.md, "On a Slurm cluster"): checked here, then submitted with sbatch.
# NODES, GPUS_PER_NODE, PARTITION, TIME, SBATCH_ARGS; SWITCHSWEEP_SHARED in the environment. ARGS: the sweep's.
slurm-sweep: $(STAMP)
	@bash deploy/slurm/submit.sh $(ARGS)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

train: $(STAMP)
	$(VENV)/bin/switchsweep train model=switch_dit model.size=tiny data=digits train.out_dir=runs/train

evaluate: $(STAMP)
	$(VENV)/bin/switchsweep evaluate checkpoint=runs/train/ckpt.pt eval.num_samples=1000

sweep: $(STAMP)
	$(VENV)/bin/switchsweep sweep sweep=design_space

# Every design side by side at the digits defaults (1,000 steps each: the models learn), sized for a CPU.
variants: $(STAMP)
	$(VENV)/bin/switchsweep sweep sweep=variants

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
	$(PY) -m benchmarks.step_time --floor
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.eval_throughput
	$(PY) -m benchmarks.sweep_overhead
	$(PY) -m benchmarks.prepare_throughput

# GPU acceptance in one command (docs/cluster.md, "On a GPU"): one line and exit 0 on a machine without CUDA.
# It runs with this checkout's .venv where there is one, else with the machine's python3 (PyTorch and Triton)
# plus the config packages that `make gpu-wheels` puts in .whl/ for a GPU machine without the full install.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	@if [ -d .whl ] && ! $(GPU_PY) -c "import hydra" 2>/dev/null; then \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --upgrade --target .whl/site .whl/*.whl; fi
	@PYTHONPATH="$(CURDIR)/.whl/site$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PY) -m benchmarks.gpu_check $(ARGS)

gpu-wheels: $(STAMP)
	rm -rf .whl
	$(PY) -m pip wheel -q --no-deps -w .whl $$($(PY) -m pip freeze | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime)==')

# Killed workers, inline trials, a killed driver and a lost head, survived? (about 9 minutes on 2 cores)
faults: $(STAMP)
	$(PY) -m benchmarks.faults

# When the models learn (learning curves over lr and patch size, about 25 minutes on 2 cores; the defaults
# follow from it), the paper's ordering at small scale (about 20) and the grid-vs-TPE compute ratio (about 30).
learning: $(STAMP)
	$(PY) -m benchmarks.learning

paper-check: $(STAMP)
	$(PY) -m benchmarks.paper_check

# One evaluation's noise, paired against unpaired, and samples against DDIM steps at equal cost (about 12 minutes).
paired-eval: $(STAMP)
	$(PY) -m benchmarks.paired_eval

search-efficiency: $(STAMP)
	$(PY) -m benchmarks.search_efficiency

# Mutation testing of the core modules against the fast suite: not part of `make test`, over an hour on
# 2 cores for all ~2,400 mutants; an interrupted run resumes where it stopped.
mutation: $(STAMP)
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

# The GPU cluster of cluster.yaml (docs/cluster.md, "On a GPU cluster"), driven from this machine. The cluster's
# Ray token is made here once (~/.ray/auth_token) and mounted on every node; MLflow's database URI
# (~/.switchsweep/mlflow-db, this machine's own) reaches the head alone, through SSM (make cluster-account).
# CLUSTER: another launcher config.
CLUSTER ?= cluster.yaml
# Once per AWS account: the bucket cluster.yaml names (private, encrypted), the cluster's security group (SSH
# from SSH_FROM only, e.g. SSH_FROM=203.0.113.7/32), the two instance profiles and MLflow's database URI in SSM.
cluster-account: $(STAMP)
	$(PY) deploy/aws/account.py --cluster $(CLUSTER) --ssh-from "$(SSH_FROM)"

cluster-up: $(STAMP)
	@$(PY) deploy/aws/mlflow_db.py check --cluster $(CLUSTER)
	@test -s ~/.ray/auth_token || $(VENV)/bin/ray get-auth-token --generate >/dev/null
	RAY_UP_enable_autoscaler_v2=0 $(VENV)/bin/ray up -y $(CLUSTER)  # v1: the autoscaler the launch tests run

cluster-down: $(STAMP)
	$(VENV)/bin/ray down -y $(CLUSTER)

# MLflow's login on the cluster (made by its head): the browser asks for it; `eval` the lines it prints for
# switchsweep's own commands against http://127.0.0.1:5000 (export, report).
cluster-login: $(STAMP)
	@$(VENV)/bin/ray exec $(CLUSTER) 'bash ~/switchsweep/deploy/mlflow-service.sh login' 2>/dev/null | tr -d '\r' | grep '^export MLFLOW_'

# The Ray dashboard on http://127.0.0.1:8265 and MLflow on http://127.0.0.1:5000, through SSH until Ctrl+C
# (on the head, socat relays loopback to MLflow's private address while this runs).
cluster-ui: $(STAMP)
	$(VENV)/bin/ray exec $(CLUSTER) --port-forward=8265 --port-forward=5000 \
	  'socat TCP-LISTEN:5000,bind=127.0.0.1,fork,reuseaddr TCP:$$(hostname -I | cut -d" " -f1):5000'

# A sweep as a Ray job on the head, so it outlives this machine (needs `make cluster-ui` running).
# ARGS: the sweep's settings, e.g. ARGS="sweep=table1 model.size=S".
cluster-sweep: $(STAMP)
	RAY_AUTH_MODE=token $(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --no-wait -- switchsweep sweep platform=cluster $(ARGS)

# ImageFolder -> VAE latents on the cluster's GPUs, as a Ray job on the head, into the bucket. ARGS: data.root=
# and data.vae= on folders every node mounts, out= in the bucket, e.g.
# ARGS="data=imagenet256 data.root=/mnt/in/train data.vae=/mnt/vae out=s3://BUCKET/latents/in256".
cluster-prepare: $(STAMP)
	RAY_AUTH_MODE=token $(VENV)/bin/ray job submit --address http://127.0.0.1:8265 --no-wait -- switchsweep prepare address=auto $(ARGS)

clean:
	rm -rf runs .pytest_cache mutants
