# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned first and in the same pip call: any looser range makes pip fetch a multi-GB CUDA build.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/inference_node)
TEST_REDIS_URL    ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/9)
# pytest-xdist workers; each takes its own test database and the Redis database after the last
# worker's (conftest.py), so with 3 the suite uses databases 9, 10 and 11. 0: one process.
# Three on two cores: with two, a quarter of the CPU's time goes to waits on the servers the
# tests start, and a third worker fills it (docs/benchmarks.md, "The test suite's time").
# Whole files per worker, in the collection order (no reordering by size), which conftest.py
# sets: the chaos smoke first; the end-to-end files, whose servers live for the whole session on
# the worker's databases, after the unit tests, the longest first; the files that share a
# session server (conftest.py's SHARED_SERVERS) on one worker, which starts it once.
TEST_WORKERS      ?= 3
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run run-tiny test lint ruff format migrate screenshots loadtest loadtest-smoke

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH)
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH) ".[test,loadtest]"
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput -v0

## make run: install, migrate, print a demo key, serve on http://$(HOST):$(PORT)
run: migrate
	$(BIN)/python manage.py collectstatic --noinput -v0
	@echo "Demo API key (shown once):"
	@$(BIN)/python manage.py seed_demo
	$(BIN)/daphne -b $(HOST) -p $(PORT) console.asgi:application

## make run-tiny: the same, serving a tiny random model built here (offline, no download)
TINY_MODEL ?= .cache/tiny-model
run-tiny: $(STAMP)
	test -f $(TINY_MODEL)/config.json || $(BIN)/python manage.py make_tiny_model $(TINY_MODEL)
	INFERENCE_MODEL=$(abspath $(TINY_MODEL)) INFERENCE_ADAPTER=$(abspath $(TINY_MODEL))/adapter \
		$(MAKE) run

## make test: the whole suite against real PostgreSQL and Redis (127.0.0.1 by default)
# make lint's checks: ruff first (a second), mypy beside the tests (two minutes on a fresh
# clone's empty cache on a slow machine, in the CPU the test servers' waits leave), its report
# after theirs; either failing fails make test.
test: $(STAMP) ruff
	@log=$$(mktemp); $(BIN)/mypy > $$log 2>&1 & mypy=$$!; \
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(BIN)/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder); \
	tests=$$?; wait $$mypy; typed=$$?; echo "$(BIN)/mypy"; cat $$log; rm -f $$log; \
	test $$tests -eq 0 && test $$typed -eq 0

## make loadtest: the chaos benchmark (about 6 minutes): two replicas of a flan-t5-base-shaped
## model behind Traefik, a 150-user Locust swarm, Redis restarted, a replica SIGKILLed, Postgres
## cut; the report and plots go to loadtest/reports/<timestamp>/ (exit 1 if a check fails).
loadtest: $(STAMP)
	$(BIN)/python -m loadtest.chaos

## make loadtest-smoke: the same path in about 30 s on the tiny model (also part of make test)
loadtest-smoke: $(STAMP)
	$(BIN)/python -m loadtest.chaos --smoke --timed-checks-advisory

lint: $(STAMP) ruff
	$(BIN)/mypy

ruff: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make screenshots: rerun the console's browser journey and refresh docs/img/console/*.png
SHOTS := docs/img/console
screenshots: $(STAMP)
	rm -rf $(SHOTS) && mkdir -p $(SHOTS)
	CONSOLE_SCREENSHOTS=$(abspath $(SHOTS)) REQUIRE_BROWSER=1 \
	  DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	  $(BIN)/pytest -q -p no:cacheprovider tests/e2e/console/test_console_browser.py
	# Optional (apt-get install pngquant): palette PNGs, a third of the size.
	if command -v pngquant >/dev/null; then \
	  pngquant --force --ext .png --quality 70-95 --skip-if-larger $(SHOTS)/*.png || true; fi
