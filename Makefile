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

.PHONY: help venv migrate setup run serve simulator test test-embedded test-services lint bench bench-peers clean

help:
	@echo "make run    set up everything and serve llmhub on http://$(HOST):$(PORT) (with the simulated upstream)"
	@echo "make test   run the test suite (CI=true also runs it on the real PostgreSQL and Redis)"
	@echo "make serve  serve the app under uvicorn (WEB_CONCURRENCY workers)"
	@echo "make bench  benchmark the hub against the simulated upstream"

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

serve: venv
	$(VENV)/bin/uvicorn llmhub.asgi:application --host $(HOST) --port $(PORT) --workers $(WEB_CONCURRENCY) \
		--loop uvloop --http httptools --no-access-log --lifespan off

# The simulated upstream runs beside the app so the demo models answer with no keys and no internet.
run: setup
	@echo "llmhub on http://$(HOST):$(PORT)/  (admin: /admin/, API: /api/models/, docs: /api/docs/)"
	@$(PY) manage.py simulate_upstream --host 127.0.0.1 --port $(SIM_PORT) & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	$(MAKE) --no-print-directory serve

test: test-embedded
ifeq ($(CI),true)
test: test-services
endif

test-embedded: venv
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q

# The whole suite on the real PostgreSQL and Redis; tests marked `services` fail here if those are missing.
test-services: venv
	DATABASE_URL=$(CI_DATABASE_URL) REDIS_URL=$(CI_REDIS_URL) LLMHUB_REQUIRE_SERVICES=true \
	DJANGO_SECRET_KEY=ci-only-secret-key-0123456789-0123456789-0123456789-abcdef \
	LLMHUB_ENCRYPTION_KEYS=Y2ktb25seS1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg= \
	DJANGO_SECURE_SSL_REDIRECT=false \
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf var .pytest_cache
