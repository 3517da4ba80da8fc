# Every target that needs the virtualenv depends on it, so each works on a fresh clone alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMG ?= xds-operator:latest

.PHONY: install run test lint bench protos crds manifests deploy undeploy docker-build clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m xds_operator.demo run --dir config/samples

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check xds_operator tests bench examples
	$(BIN)/ruff format --check xds_operator tests bench examples

# The benchmark suite (not part of `make test`): a table, bench/results/latest.json and fanout.png.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

protos: $(STAMP)
	$(BIN)/python -m xds_operator.api.build_protos

# The CRD, generated from protos/ (run `make protos` first after editing the proto).
crds: $(STAMP)
	$(BIN)/python -m xds_operator.api.crd

# Every generated file under crds/ and config/: the CRD and the example Envoy's bootstrap.
manifests: crds
	$(BIN)/xds-operator bootstrap --node-id envoy-ingress --cluster envoy-ingress \
		--xds-address xds-operator.xds-operator-system.svc:18000 > config/envoy/bootstrap.yaml.tmp
	mv config/envoy/bootstrap.yaml.tmp config/envoy/bootstrap.yaml

# The CRD, RBAC and the control plane in namespace xds-operator-system (needs kubectl and a cluster).
deploy:
	kubectl apply -k config/default

undeploy:
	kubectl delete -k config/default --ignore-not-found

docker-build:
	docker build -t $(IMG) .

clean:
	rm -rf $(VENV) build *.egg-info
