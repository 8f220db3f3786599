# sandnet: build, demo and test entry points. Every target that needs the
# environment depends on `setup`, so a fresh machine needs no manual steps.

VENV     ?= .venv
PYTHON   := $(VENV)/bin/python
PROTOS   := $(wildcard protos/sandnet/v1/*.proto)
STUBS    := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))
STAMP    := $(VENV)/.installed

.PHONY: setup proto demo test test-unit test-integration compose-check bench lint clean

setup: $(STAMP) proto

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

proto: $(STUBS) sandnet/v1/__init__.py

sandnet/v1/__init__.py:
	mkdir -p sandnet/v1
	touch $@

sandnet/v1/%_pb2.py: protos/sandnet/v1/%.proto $(STAMP)
	$(PYTHON) -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

demo: setup
	$(PYTHON) scripts/demo.py

# Every workload against sandnet and the Linux kernel, about 3 minutes, as
# root; prints a table and writes bench/out/latest.json.
bench: setup
	$(PYTHON) bench/run.py $(BENCH_ARGS)

test: setup
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS)

test-unit: setup
	$(PYTHON) -m pytest -ra tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(PYTHON) -m pytest -ra tests/integration $(PYTEST_ARGS)

# Validate deploy/docker-compose.yml in each network mode with the real
# docker-compose tool; its config command needs no Docker engine.
COMPOSE_ENV_FILES := deploy/.env deploy/none.env deploy/host.env

compose-check: $(STAMP)
	@for env in $(COMPOSE_ENV_FILES); do \
		echo "docker-compose config with $$env"; \
		docker-compose -f deploy/docker-compose.yml --env-file $$env config --quiet || exit 1; \
	done

clean:
	rm -rf $(VENV) sandnet/v1 .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
