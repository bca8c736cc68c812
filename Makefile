# Activity pipeline: local development and CI entry points. `make` lists the targets.
# Everything runs on this machine: the Kafka broker and PostgreSQL are started by
# deploy/local/stack.ts from .local/ (see `make install`); no Docker needed.

SHELL := /bin/bash
TSC := node_modules/.bin/tsc
BIOME := node_modules/.bin/biome
FILTER ?=
SCENARIO ?=
CYCLES ?=

.DEFAULT_GOAL := help
.PHONY: help install build typecheck lint up up-guard test bench chaos clean clean-data

help: ## List the targets
	@echo 'Usage: make <target>'
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'
	@echo
	@echo 'Examples: make up    INGEST_PORT=9080 make up    make test FILTER=window'

install: ## Install apt packages, npm deps and the Kafka broker jars (idempotent)
	bash deploy/local/install.sh

build: install ## Compile TypeScript into dist/, dropping output whose source is gone
	$(TSC) -p tsconfig.json
	@# The dashboard page: browser TypeScript (its own tsconfig: lib dom, ES modules) beside
	@# its HTML and CSS, all in dist/query/web, which the query service serves.
	$(TSC) -p query/web/tsconfig.json
	cp query/web/index.html query/web/dashboard.css dist/query/web/
	@# A deleted source must not leave its compiled test behind (dist/ is not wiped: a
	@# concurrent test run may be reading it).
	@cd dist && find . -name '*.js' | while read -r f; do \
	  [[ -f "../$${f%.js}.ts" ]] || rm -f "$$f" "$$f.map"; \
	done

typecheck: install ## Type-check sources and tests without emitting
	$(TSC) -p tsconfig.json --noEmit
	$(TSC) -p query/web/tsconfig.json --noEmit

lint: install ## Biome lint and format check
	$(BIOME) check .

up: up-guard install build ## Run broker, Postgres, ingest and aggregator locally; Ctrl-C stops all
	node dist/deploy/local/up.js

# Checked before the build: rebuilding dist/ under a running `make up` would pull files from
# under its services. up.js holds the same lock and checks again.
up-guard:
	@pid=$$(cat .local/dev/up.pid 2>/dev/null); \
	if [[ -n "$$pid" ]] && grep -qs up.js "/proc/$$pid/cmdline"; then \
	  echo "make up is already running (pid $$pid). Stop it with Ctrl-C in its terminal, or: kill $$pid"; \
	  exit 1; \
	fi

test: install build lint ## Build, lint, then run all tests against a fresh broker and Postgres
	node dist/deploy/local/run-tests.js $(FILTER)

bench: install build ## Benchmarks with their baselines → bench/RESULTS.md (SCENARIO=name runs one)
	INSTALL_BENCH_TOOLS=1 bash deploy/local/install.sh
	node dist/bench/run-bench.js $(SCENARIO)

chaos: install build ## Fault injection with an oracle → docs/RELIABILITY.md table (SCENARIO=name CYCLES=n)
	SCENARIO='$(SCENARIO)' CYCLES='$(CYCLES)' node dist/chaos/run-chaos.js

clean: ## Remove dist/
	rm -rf dist

clean-data: ## Remove local broker/Postgres data (.local/dev, .local/test) and kept chaos stacks (.local/chaos-*)
	rm -rf .local/dev .local/test .local/chaos-*
