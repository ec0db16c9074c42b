# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install web-vendor run test bench bench-quick clean screenshots lint

# The chat page's markdown renderer and sanitizer (marked, DOMPurify): pinned in web/package-lock.json,
# installed with `npm ci` and their browser builds copied into the package (app/web/vendor/, not committed).
# Without npm the page still works and shows replies as plain text (its console says why).
WEB_VENDOR := app/web/vendor
WEB_FILES := web/node_modules/marked/lib/marked.umd.js web/node_modules/dompurify/dist/purify.min.js

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

$(WEB_VENDOR)/.built: web/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix web --no-audit --no-fund --silent && mkdir -p $(WEB_VENDOR) \
		&& cp $(WEB_FILES) $(WEB_VENDOR)/ && touch $@; \
	else \
		echo "warning: npm is not installed: the chat page will show replies as plain text (no markdown)" >&2; \
	fi

web-vendor: $(WEB_VENDOR)/.built

install: $(VENV)/.installed web-vendor

run: install
	$(BIN)/python -m app serve --migrate

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and format) over the code and the tests, and the type checker over app/ (pyproject.toml).
lint: install
	$(BIN)/python -m ruff check app tests bench
	$(BIN)/python -m ruff format --check app tests bench
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .pytest_cache web/node_modules $(WEB_VENDOR)

bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# The inbox and chat page screenshots in docs/images/ (1280x800, 390x844), from a running server (SCREENSHOT_URL, default
# http://127.0.0.1:8000) with ADMIN_KEY a key of the tenant `default`; see tests/web/screenshots.py.
screenshots: install
	$(BIN)/python -m tests.web.screenshots
