# Entry points. `make test` is what CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: prereqs prereqs-demo
prereqs: ## Check that every tool `make test` needs is installed, naming what is missing
	hack/prereqs.sh test
prereqs-demo:
	@hack/prereqs.sh demo

.PHONY: build
build: ## Build the operator
	$(CARGO) build --locked

.PHONY: crds
crds: ## Regenerate crds/ and the chart's copy from the Rust types
	for crd in assumedroles.sts.refresh.dev assumedrolepolicies.sts.refresh.dev clusterassumedroles.sts.refresh.dev; do \
	  $(CARGO) run --locked --quiet -- crd $$crd > crds/$$crd.yaml && \
	  cp crds/$$crd.yaml charts/assumed-role-operator/crds/ || exit 1; \
	done

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

.PHONY: unit
unit: ## Unit tests and the CRD drift check (no cluster needed)
	$(CARGO) test --locked --lib --bins --test crd --test chart --test prereqs

.PHONY: cluster
cluster: ## Build (or reuse) the control plane, helm and moto
	hack/cluster.sh build

.PHONY: e2e
e2e: cluster ## End-to-end tests against a fresh local control plane and STS
	hack/e2e.sh

.PHONY: image
image: ## Build the image from the Dockerfile (stand-in bases where they cannot be pulled; an engine of its own where none answers)
	hack/image.sh

.PHONY: image-check
image-check: ## The Dockerfile's release build, the binary's linkage, and hadolint
	hack/image-check.sh

.PHONY: test
test: ## Everything CI checks (checks the prerequisites first)
	@hack/prereqs.sh test
	$(MAKE) lint unit e2e image-check

.PHONY: faults
faults: cluster ## The fault matrix: every fault of the README's Reliability table under a steady workload, one row each (about 20 minutes)
	$(CARGO) test --locked --test faults -- --ignored --nocapture

.PHONY: bench
bench: cluster ## Time and memory for BENCH_N (200) AssumedRoles, a restart, the credentials endpoint and the injection webhook
	hack/bench.sh
	hack/bench-endpoint.sh
	hack/bench-webhook.sh

.PHONY: demo
demo: prereqs-demo ## Run the operator against a local control plane and watch a Secret refresh
	hack/demo.sh

.PHONY: up down
up: ## Start the local control plane in .cluster/ (then: source .cluster/env)
	hack/cluster.sh up
down: ## Stop what `make up` started
	hack/cluster.sh down
