# genexflow: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean help sysdeps triton-env tools-env audit k8s-render k8s-dev-secrets images

help:
	@echo "make demo   - install (first run) and run the whole pipeline on the shipped demo cohort"
	@echo "make test   - install (first run) and run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - run the benchmarks (slow; prints tables with peers side by side)"
	@echo "make sysdeps    - (root) apt-get install the Debian packages the tests need (PostgreSQL, R + Bioconductor), if missing"
	@echo "make triton-env - create the local Triton server venv (~/.cache/genexflow/triton-venv, or $$GENEXFLOW_TRITON_VENV)"
	@echo "make tools-env  - create .venv-tools (checkov, pip-audit; kept apart from the pinned set)"
	@echo "make audit      - pip-audit the pinned dependency set (needs network access to the advisory DB)"
	@echo "make k8s-render - render every kustomization in infra/k8s to build/k8s/"
	@echo "make images     - build the CPU component, MLflow and CPU Triton images with buildah (local base; SBOMs)"

# CPU torch 2.13.0 first (a file on local disk); a bare torch requirement would pull a CUDA build.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q torch==2.13.0 -c constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/genexflow run --demo

test: install sysdeps triton-env tools-env
	$(PY) -m pytest -q

# --- infrastructure helpers (docs/infra.md) -------------------------------------------------------------
# Debian packages the tests use: PostgreSQL (MLflow-on-Postgres concurrency test), Chromium (the run report
# opens in a real headless browser, tests/test_report_pages.py), R with the Bioconductor
# packages the parity tests call through Rscript (tests/test_r_*.py: sva 3.46, edgeR 3.40.2, impute 1.72.3,
# limma), buildah + mmdebstrap (the images are built and run in tests/test_infra_images.py). Installed only
# when running as root on a Debian-like system and only if missing; otherwise the tests that need them skip
# with a message.
SYSDEPS := postgresql chromium r-base-core r-bioc-sva r-bioc-edger r-bioc-impute r-bioc-limma buildah mmdebstrap
sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		else echo "missing Debian packages:$$missing (run 'make sysdeps' as root; the tests that need them skip)"; fi; \
	fi

# The local Triton server runs from its own venv (nvidia-pytriton pins numpy<2); idempotent.
triton-env: install
	$(PY) -m genexflow.serving.triton_server --ensure-env

# checkov pins tabulate<0.10, which conflicts with constraints.txt: checkov and pip-audit get their own venv.
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed
$(TOOLS_STAMP): infra/tools-constraints.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q -c infra/tools-constraints.txt checkov pip-audit cyclonedx-bom
	touch $(TOOLS_STAMP)

tools-env: $(TOOLS_STAMP)

audit: tools-env
	$(TOOLS_VENV)/bin/pip-audit -r constraints.txt --no-deps --disable-pip --progress-spinner off
	$(TOOLS_VENV)/bin/pip-audit -r serving/triton-constraints.txt --no-deps --disable-pip --progress-spinner off

# Container images, built here with buildah from a local mmdebstrap base (no registry, no Docker engine);
# prints build times and sizes, checks the size budgets, writes SBOMs + pip-audit reports to build/images/.
images: install tools-env
	$(PY) infra/scripts/build_images.py

k8s-dev-secrets: install
	$(PY) infra/scripts/dev_secrets.py

k8s-render: install k8s-dev-secrets
	mkdir -p build/k8s
	for k in base overlays/dev overlays/prod training; do \
		$(VENV)/bin/kubectl kustomize infra/k8s/$$k > build/k8s/$$(echo $$k | tr / -).yaml || exit 1; done
	@echo "rendered into build/k8s/"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(TOOLS_VENV) build dist *.egg-info .pytest_cache
