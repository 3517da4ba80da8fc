# Every target that needs the virtualenv depends on it, so each works on a fresh clone alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMG ?= xds-operator:latest
KUBECTL ?= kubectl

.PHONY: install run test lint bench protos crds manifests deploy undeploy install-crds uninstall-crds docker-build clean kubectl

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m xds_operator.demo run --dir config/samples

# In parallel (pytest-xdist): most tests wait on subprocesses, Envoy and sockets rather than use a core, so
# more workers than cores pays. `--dist loadgroup` keeps tests marked with one xdist_group on one worker
# (tests/bench_smoke). One folder alone: `$(BIN)/pytest -q tests/xds` (serial), or add `-n 4`.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

# ruff, then mypy --strict over the package (configured in pyproject.toml: [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check xds_operator tests bench examples stubs
	$(BIN)/ruff format --check xds_operator tests bench examples stubs
	$(BIN)/mypy

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

# Every generated file under crds/ and config/: the CRD and the example Envoy's bootstraps (plain, and mTLS).
manifests: crds
	$(BIN)/xds-operator bootstrap --node-id envoy-ingress --cluster envoy-ingress \
		--xds-address xds-operator.xds-operator-system.svc:18000 > config/envoy/bootstrap.yaml.tmp
	mv config/envoy/bootstrap.yaml.tmp config/envoy/bootstrap.yaml
	$(BIN)/xds-operator bootstrap --node-id envoy-ingress --cluster envoy-ingress \
		--xds-address xds-operator.xds-operator-system.svc:18000 --tls-ca /etc/envoy/tls/ca.crt \
		--tls-cert /etc/envoy/tls/tls.crt --tls-key /etc/envoy/tls/tls.key > config/envoy-tls/bootstrap.yaml.tmp
	mv config/envoy-tls/bootstrap.yaml.tmp config/envoy-tls/bootstrap.yaml

# The CRD, RBAC and the control plane in namespace xds-operator-system, running image $(IMG) (needs
# kubectl and a cluster). As kubebuilder's `kustomize edit set image`, but in a temporary overlay over
# config/default (removed afterwards), so no tracked file changes.
deploy: kubectl
	@overlay=$$(mktemp -d "$(CURDIR)/.deploy.XXXXXX") && trap 'rm -rf "$$overlay"' EXIT && \
	hack/image-overlay.sh '$(IMG)' ../config/default > "$$overlay/kustomization.yaml" && \
	$(KUBECTL) kustomize "$$overlay" > "$$overlay/manifests.yaml" && \
	echo "deploying image $(IMG)" && \
	$(KUBECTL) apply -f "$$overlay/manifests.yaml"

undeploy: kubectl
	$(KUBECTL) delete -k config/default --ignore-not-found

# The VirtualService CRD alone (e.g. to run `serve` outside the cluster). Uninstalling it deletes every VirtualService.
install-crds: kubectl
	$(KUBECTL) apply -k config/crd

uninstall-crds: kubectl
	$(KUBECTL) delete -k config/crd --ignore-not-found

kubectl:
	@command -v $(KUBECTL) >/dev/null || { echo "$(KUBECTL) is not on PATH: install kubectl (1.27 or newer)" >&2; exit 1; }

docker-build:
	docker build -t $(IMG) .

clean:
	rm -rf $(VENV) build *.egg-info
