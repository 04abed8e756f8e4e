# Two entry points: `make run` (set up and run the gateway on embedded defaults) and `make test`
# (set up and run every check). Both work on a fresh Debian machine as root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := dcmtk strace orthanc orthanc-dicomweb orthanc-postgresql openssl
export HITL_GATEWAY_STORAGE__DATA_DIR ?= ./var

.PHONY: run test setup setup-test debian-packages lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

setup: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/hitl-gateway db upgrade
	$(BIN)/hitl-gateway demo setup

setup-test: $(BIN)/python debian-packages
	$(BIN)/pip install --quiet -e '.[test]'
	# Independent FHIR validator (@medplum/core + FHIR.js) for the tests, in a git-ignored folder.
	cd tests/fhir_validator && npm install --no-audit --no-fund --loglevel=error

run: debian-packages setup
	@echo
	@echo "hitl-gateway is starting on its embedded defaults (SQLite, spool and MLflow store under $(HITL_GATEWAY_STORAGE__DATA_DIR))."
	@echo "  DICOM: AE HITLGW on port 11112     HTTP: http://localhost:8080 (FHIR base /fhir)"
	@echo "  Send demo studies:   $(BIN)/hitl-gateway demo send --positive 1 --negative 1"
	@echo "    or with dcmtk:     storescu -aec HITLGW 127.0.0.1 11112 <file.dcm>"
	@echo "  Reviewer:            $(BIN)/hitl-gateway reviewer credential --practitioner Practitioner/dr-jones --granted-by Practitioner/admin"
	@echo "  Reviewer token:      $(BIN)/hitl-gateway token --role reviewer --user Practitioner/dr-jones"
	@echo "  Open review Tasks:   curl -H \"Authorization: Bearer \$$TOKEN\" 'http://localhost:8080/fhir/Task?status=requested'"
	@echo
	$(BIN)/hitl-gateway serve

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup-test
	$(BIN)/mypy

test: setup-test lint typecheck
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
