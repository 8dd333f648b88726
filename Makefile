# cliptune: the two quick-start commands are `make run` and `make test`.
# CUDA=1 selects the full CUDA libtorch layout (see scripts/setup-libtorch.sh).

CUDA ?= 0
CARGO ?= cargo

.PHONY: check-test-tools setup build run test browser-test bench-forward bench-preprocess fixtures check-tools bench-train gpu-check

check-tools:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust 1.89+ with rustup (https://rustup.rs): curl -sSf https://sh.rustup.rs | sh" >&2; exit 1; }
	@$(CARGO) --version | awk '{split($$2, v, "."); if (v[1] == 1 && v[2] < 89) { print "error: " $$0 " is older than 1.89: rustup update stable" > "/dev/stderr"; exit 1 }}'
	@command -v python3 >/dev/null || { echo "error: python3 not found (it fetches the libtorch wheels): apt-get install -y python3 python3-pip" >&2; exit 1; }
	@python3 -m pip --version >/dev/null 2>&1 || { echo "error: python3 has no pip (it fetches the libtorch wheels): apt-get install -y python3-pip, or python3 -m ensurepip" >&2; exit 1; }
	@command -v c++ >/dev/null || { echo "error: no C++ compiler (the libtorch bindings are C++): apt-get install -y g++" >&2; exit 1; }
	@command -v nasm >/dev/null || echo "note: nasm not found: JPEG decoding builds without SIMD (same pixels, slower; docs/preprocessing.md). For SIMD: apt-get install -y nasm before the first build" >&2

## The browser test also needs Node.js (Chromium is installed by the test when missing).
check-test-tools: check-tools
	@command -v node >/dev/null || { echo "error: node not found (the search page's browser test runs on Node.js 18+): apt-get install -y nodejs" >&2; exit 1; }
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { echo "error: python3 cannot make venvs (the dtlpy tests run in one): apt-get install -y python3-venv" >&2; exit 1; }

## Lay out libtorch 2.11.0 in .libtorch (idempotent).
setup: check-tools
	@CUDA=$(CUDA) scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --bin cliptune

## The main job: a fresh store, a captioned image set, the pipeline, a search.
run: build
	scripts/demo.sh

## Every test (unit, parity, integration, end to end, and the browser test, which is the one
## ignored test: one `cargo test` run, one compilation), the real dtlpy SDK
## against the fake Dataloop gate (tests/dataloop, in a venv), and the libtorch
## wheel fetch as a fresh machine does it (empty pip cache), so a warm cache hides nothing.
test: check-test-tools setup
	scripts/setup-libtorch.sh --check-fetch
	scripts/browser-test.sh --install
	$(CARGO) test --workspace -- --include-ignored
	CARGO=$(CARGO) scripts/dtlpy-test.sh

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
