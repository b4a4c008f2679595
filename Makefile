# gpu-queue: the two commands of the README, and their parts.
#   make demo   the seed story on a local control plane (no Docker needed)
#   make test   lint, type-check, and every test tier that can run here
.PHONY: setup lint test unit demo bench e2e clean-dev

VENV := .venv
BIN := $(VENV)/bin

setup:
	scripts/setup.sh

lint: setup
	$(BIN)/ruff check webhook gpu_queue_dev tests bench
	$(BIN)/mypy webhook gpu_queue_dev

test: lint
	$(BIN)/pytest -q -ra

unit: setup
	$(BIN)/pytest -q tests/unit

demo: setup
	$(BIN)/gpu-queue demo

e2e: setup
	tests/e2e/run.sh

bench: setup
	$(BIN)/python bench/admission.py
	$(BIN)/python bench/queue.py
	$(BIN)/python bench/release.py

clean-dev:
	-$(BIN)/gpu-queue dev down
