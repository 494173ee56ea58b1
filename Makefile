# llmhub: `make run` serves a working hub on a fresh clone; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
SIM_PORT ?= 9100
WEB_CONCURRENCY ?= 1
export LLMHUB_SIMULATOR_URL ?= http://127.0.0.1:$(SIM_PORT)/v1

CI_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
CI_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: help venv migrate setup run serve simulator test test-embedded test-services lint bench bench-peers bench-dashboard soak clean

help:
	@echo "make run    set up everything and serve llmhub on http://$(HOST):$(PORT) (with the simulated upstream)"
	@echo "make test   run the test suite (CI=true also runs it on the real PostgreSQL and Redis)"
	@echo "make serve  serve the app under uvicorn (WEB_CONCURRENCY workers)"
	@echo "make bench  benchmark the hub against the simulated upstream"
	@echo "make soak   sustained load (SOAK_SECONDS), embedded and production: memory, connections, descriptors"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

migrate: venv
	mkdir -p var
	$(PY) manage.py migrate --noinput -v0

setup: migrate
	$(PY) manage.py load_models
	$(PY) manage.py ensure_demo_user

simulator: venv
	$(PY) manage.py simulate_upstream --host 127.0.0.1 --port $(SIM_PORT)

# MALLOC_ARENA_MAX: glibc's per-thread malloc arenas (thread pools, the usage writer) inflate RSS for nothing.
serve: venv
	$(PY) manage.py collectstatic --noinput -v0
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-2} $(VENV)/bin/uvicorn llmhub.asgi:application --host $(HOST) --port $(PORT) --workers $(WEB_CONCURRENCY) \
		--loop llmhub.serving:uvloop_eager_accept --http httptools --no-access-log --lifespan on

# The simulated upstream runs beside the app so the demo models answer with no keys and no internet, and a
# Celery worker with embedded beat runs the periodic model tests. LLMHUB_EMBEDDED_WORKER=true takes tasks out
# of the app's process; with no REDIS_URL their broker is a folder under var/broker (no server to install).
# Both ports are checked first: a simulator that cannot bind its port (9100 is also node_exporter's) would leave
# every demo model failing behind a running app. `ports-free` runs before anything is set up or started.
run: ports-free setup
	@echo "llmhub on http://$(HOST):$(PORT)/  (admin: /admin/, API: /api/models/, docs: /api/docs/)"
	@mkdir -p var/broker/queue var/broker/control var/broker/processed
	@$(PY) manage.py simulate_upstream --host 127.0.0.1 --port $(SIM_PORT) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	until $(PORT_OPEN) 127.0.0.1 $(SIM_PORT); do \
		kill -0 $$sim 2>/dev/null || { echo "The simulated upstream did not start on port $(SIM_PORT): stopping."; exit 1; }; \
		sleep 0.2; \
	done; \
	LLMHUB_EMBEDDED_WORKER=true $(VENV)/bin/celery -A llmhub worker --beat --pool=threads --concurrency=2 \
		--without-gossip --without-mingle --without-heartbeat -l warning & worker=$$!; \
	$(PY) manage.py usage_consume --if-configured & consumer=$$!; \
	trap 'kill $$sim $$worker $$consumer 2>/dev/null' EXIT INT TERM; \
	LLMHUB_EMBEDDED_WORKER=true $(MAKE) --no-print-directory serve

# `$(PORT_FREE) HOST PORT` fails when something already listens there; `$(PORT_OPEN) HOST PORT` succeeds once
# something accepts connections there.
PORT_FREE = $(PYTHON) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))'
PORT_OPEN = $(PYTHON) -c 'import socket, sys; sys.exit(socket.socket().connect_ex((sys.argv[1], int(sys.argv[2]))))'
define port_free
@$(PORT_FREE) $(1) $(2) 2>/dev/null || { echo "make run: port $(2) (the $(3), $(4)) is already in use on $(1): stop what \
listens there, or choose another port: make run $(4)=<free port>"; exit 1; }
endef

.PHONY: ports-free
ports-free:
	$(call port_free,$(HOST),$(PORT),app,PORT)
	$(call port_free,127.0.0.1,$(SIM_PORT),simulated upstream,SIM_PORT)

# CI runs the embedded and the services suites at once: each mostly waits on its own servers and subprocesses
# (the embedded suite: 9 min of wall time for 3.5 min of CPU), and each one's output is printed whole when it ends.
# Tests marked `mode_independent` (their outcome cannot depend on the suite's database and Redis) run in the
# embedded suite only then (LLMHUB_TESTS_IN_BOTH_SUITES; see conftest.py).
ifeq ($(CI),true)
test: venv browser
	@LLMHUB_TESTS_IN_BOTH_SUITES=true $(MAKE) --no-print-directory -j2 --output-sync=target test-embedded test-services
else
test: test-embedded
endif

test-embedded: venv browser
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q

# The whole suite on the real PostgreSQL and Redis; tests marked `services` fail here if those are missing.
test-services: venv browser
	DATABASE_URL=$(CI_DATABASE_URL) REDIS_URL=$(CI_REDIS_URL) LLMHUB_REQUIRE_SERVICES=true \
	DJANGO_SECRET_KEY=ci-only-secret-key-0123456789-0123456789-0123456789-abcdef \
	LLMHUB_ENCRYPTION_KEYS=Y2ktb25seS1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg= \
	DJANGO_SECURE_SSL_REDIRECT=false DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost \
	$(PY) -m pytest -q

# The browser tests (pages/tests/test_browser*.py) drive Debian's Chromium through Playwright's Python package; it is
# installed here when missing (`playwright install` is never used: its browsers are not Debian's).
CHROMIUM ?= /usr/bin/chromium
.PHONY: browser
browser:
	@test -x $(CHROMIUM) || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "Chromium could not be installed (apt-get install chromium): the browser tests will fail"

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf var .pytest_cache

# `make bench`: the simulated upstream and one llmhub worker on loopback, driven side by side (bench/run.py);
# prints one table and writes it to bench/RESULTS.md; then the router against a simulated fleet (simulate_fleet,
# its own section). `make bench-peers` adds the LiteLLM proxy, installed once into its own throwaway venv, as a
# third column; if it cannot be installed the table is made without it.
LITELLM_VENV := var/litellm-venv
LITELLM_VERSION ?= 1.108.7
.PHONY: bench-tools

bench: venv bench-tools
	$(PY) -m bench.run
	$(PY) manage.py simulate_experiments
	$(PY) manage.py simulate_fleet --write

bench-peers: venv bench-tools
	@test -f $(LITELLM_VENV)/.installed || { \
		echo "installing litellm[proxy]==$(LITELLM_VERSION) into $(LITELLM_VENV) (once; log: var/litellm-install.log)"; \
		mkdir -p var; rm -rf $(LITELLM_VENV); \
		{ $(PYTHON) -m venv $(LITELLM_VENV) && $(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)' \
			&& touch $(LITELLM_VENV)/.installed; } > var/litellm-install.log 2>&1 \
		|| echo "LiteLLM could not be installed (see var/litellm-install.log): no LiteLLM column"; }
	$(PY) -m bench.run --peers

# wrk drives the non-streaming runs; without it (no root, no apt) bench/loadgen.py drives them too.
bench-tools:
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1; } \
		|| echo "wrk could not be installed: bench/loadgen.py drives the non-streaming runs too"

# `make soak`: SOAK_SECONDS of load through one `make serve`-style process, embedded then production (the
# PostgreSQL database, created if missing, and the Redis database below; use your own). Samples RSS, database
# connections and descriptors; fails on errors, RSS drift >= 5% after warm-up, or growing connections.
# Writes its tables into bench/RESULTS.md. Knobs: see bench/soak.py (SOAK_MODE=embedded|production|both).
SOAK_SECONDS ?= 240
SOAK_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/llmhub_soak
SOAK_REDIS_URL ?= redis://127.0.0.1:6379/14

soak: venv
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_DATABASE_URL=$(SOAK_DATABASE_URL) SOAK_REDIS_URL=$(SOAK_REDIS_URL) $(PY) -m bench.soak

# `make bench-dashboard`: the usage pages (/usage/ and the staff view) on a PostgreSQL database filled with
# BENCH_DASHBOARD_ROWS (10 million) usage rows by `manage.py usage_fill_bench` (kept between runs; never `test`);
# fails when a page's median load is above 200 ms. Writes its table into bench/RESULTS.md. See bench/dashboard.py.
BENCH_DASHBOARD_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/llmhub_bench_dashboard
BENCH_DASHBOARD_ROWS ?= 10000000
.PHONY: bench-dashboard

bench-dashboard: venv
	BENCH_DASHBOARD_DATABASE_URL=$(BENCH_DASHBOARD_DATABASE_URL) BENCH_DASHBOARD_ROWS=$(BENCH_DASHBOARD_ROWS) \
		$(PY) -m bench.dashboard
