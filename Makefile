# cliptune: the two quick-start commands are `make run` and `make test`.
# CUDA=1 selects the full CUDA libtorch layout (see scripts/setup-libtorch.sh).

CUDA ?= 0
CARGO ?= cargo

.PHONY: setup build run test browser-test bench-forward bench-preprocess fixtures check-tools bench-train gpu-check

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
	@command -v python3 >/dev/null || { echo "error: python3 (with pip) is needed to fetch libtorch wheels" >&2; exit 1; }
	@command -v c++ >/dev/null || { echo "error: a C++ compiler (g++) is needed to build libtorch bindings" >&2; exit 1; }

## Lay out libtorch 2.11.0 in .libtorch (idempotent).
setup: check-tools
	@CUDA=$(CUDA) scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --bin cliptune

## The main job: a fresh store, a captioned image set, the pipeline, a search.
run: build
	scripts/demo.sh

## Every test (unit, parity, integration, end to end).
test: setup
	$(CARGO) test --workspace
	CARGO=$(CARGO) scripts/browser-test.sh

## The search page in headless Chromium (installs Debian's chromium when missing).
browser-test: setup
	CARGO=$(CARGO) scripts/browser-test.sh

## Forward throughput vs PyTorch/open_clip (needs the Python reference venv).
bench-forward: setup
	scripts/bench-forward.sh

## Regenerate the parity fixtures with the Python reference implementations.
fixtures:
	$$(scripts/refvenv.sh) scripts/reference/clip_reference.py tests/fixtures/clip
	$$(scripts/refvenv.sh) scripts/reference/prep_reference.py all
	$$(scripts/refvenv.sh) scripts/reference/train_reference.py tests/fixtures/train

## Training samples/s and peak memory vs open_clip_train; Fashion-MNIST quality (see docs/training.md).
bench-train: setup
	scripts/bench-train.sh
	scripts/bench-train-fmnist.sh

## CUDA check of training (ViT-B/32, batch 128, bf16): samples/s and MFU. Needs a GPU and CUDA=1.
gpu-check: setup
	scripts/gpu-check.sh

## Image preprocessing throughput vs PIL + torchvision, and tokenizer speed (needs the Python reference venv).
bench-preprocess:
	scripts/bench-preprocess.sh
