# Two commands do all the set-up on a fresh machine:
#   make test   -> .venv + pinned requirements + editable package, then pytest
#   make book   -> the same set-up, the quick-profile runs, then the Jupyter Book into _build/html
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := hybridkd
PROFILE ?= quick

.PHONY: setup test book clean-book wheels publish

# Reinstall only when requirements.txt or pyproject.toml changed (the stamp is older).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (hybridkd)"
	touch $(STAMP)

# ipykernel warns at every kernel start that its local TCP sockets are not encrypted: nothing about the
# user's work, and `make book` starts a dozen kernels. The venv's kernel configuration (read by every kernel
# this venv's Python runs: papermill's, jupyter-book's) drops that one message and no other.
KERNEL_CONFIG := $(VENV)/etc/ipython/ipython_kernel_config.py

$(KERNEL_CONFIG): scripts/ipython_kernel_config.py | $(STAMP)
	mkdir -p $(@D)
	cp scripts/ipython_kernel_config.py $@

setup: $(STAMP) $(KERNEL_CONFIG)

test: setup
	$(PY) -m pytest -q

book: setup
	$(PY) -m hybridkd_lib reproduce --profile $(PROFILE)
	mkdir -p results/_site
	HYBRIDKD_BOOK_PROFILE=$(PROFILE) $(VENV)/bin/jupyter-book build -q --all .

clean-book:
	rm -rf _build

# Publish the built book: commit _build/html to the gh-pages branch (ghp-import); push only with PUSH=1.
# Builds first if there is no build yet.
publish:
	test -f _build/html/index.html || $(MAKE) book
	$(VENV)/bin/ghp-import --no-jekyll -m "Publish the book ($$(git rev-parse --short HEAD))" \
	  $(if $(PUSH),--push,) _build/html
	@echo "gh-pages holds _build/html$(if $(PUSH), and was pushed, (not pushed: make publish PUSH=1 pushes))"

# Wheels for a GPU machine without network or venv (scripts/gpu_check.sh installs them from .whl/):
# this project and the pure-Python pins such a machine lacks, for CPython 3.12 on x86-64.
WHEEL_PINS := spikingjelly timm tqdm
wheels: setup
	mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for n in $(WHEEL_PINS); do grep -E "^$$n==" requirements.txt; done)
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl . && rm -rf build
	ls .whl
