# gpu-queue: the two commands of the README, and their parts.
#   make demo   the seed story on a local control plane (no Docker needed)
#   make test   lint, type-check, and every test tier that can run here; then the hub tests again
#               on JupyterHub 5.5 (make test-hub5 runs only those); then the kind tier (make e2e
#               runs only that: the image and the chart in a kind cluster, built offline)
.PHONY: setup lint test test-hub5 unit demo demo-hub bench e2e clean-dev

VENV := .venv
BIN := $(VENV)/bin
# The hub module again on JupyterHub 5.5 (zero-to-jupyterhub 4.x); .venv has the newest JupyterHub.
HUB5_BIN := .venv-hub5/bin
HUB_TESTS := tests/unit/test_hub.py tests/cluster/test_hub_view.py tests/cluster/test_hub_real.py tests/cluster/test_waiting_room.py tests/cluster/test_dashboard_hub.py tests/cluster/test_hold_limit.py
HUB_VERSION = -c 'import sys, jupyterhub, kubespawner; print(f"[test] JupyterHub {jupyterhub.__version__}, KubeSpawner {kubespawner.__version__}: {sys.argv[1]}")'

setup:
	scripts/setup.sh

lint: setup
	$(BIN)/ruff check webhook gpu_queue_dev tests bench
	$(BIN)/mypy webhook gpu_queue_dev bench

test: lint
	@$(BIN)/python $(HUB_VERSION) "every test"
	$(BIN)/pytest -q -ra --ignore=tests/e2e
	@$(HUB5_BIN)/python $(HUB_VERSION) "the hub tests"
	$(HUB5_BIN)/pytest -q -ra $(HUB_TESTS)
	tests/e2e/run.sh

test-hub5: setup
	@$(HUB5_BIN)/python $(HUB_VERSION) "the hub tests"
	$(HUB5_BIN)/pytest -q -ra $(HUB_TESTS)

unit: setup
	$(BIN)/pytest -q tests/unit

demo: setup
	$(BIN)/gpu-queue demo

# The seed story with a real JupyterHub and JupyterLab on kind, left running to click through.
demo-hub: setup
	scripts/demo-hub.sh

e2e: setup
	tests/e2e/run.sh

bench: setup
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/queue.py
	$(BIN)/python bench/release.py

clean-dev:
	-$(BIN)/gpu-queue dev down
