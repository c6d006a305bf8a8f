# Mart: the two commands that matter are `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help run admin seed test k8s-check build proto proto-check proto-baseline lint format bench bench-gateway bench-catalog bench-orders bench-notifications bench-tracing fuzz deploy-check chaos clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

run: ## Run the whole mart on this machine (local PostgreSQL under .mart/, no Docker); Ctrl-C stops it
	@scripts/run.sh

admin: ## Create the first admin in the database of `make run` (EMAIL=you@example.com; asks for a password)
	@[ -n "$(EMAIL)" ] || { echo "usage: make admin EMAIL=you@example.com" >&2; exit 2; }
	@scripts/mart.sh users create-admin --email "$(EMAIL)"

seed: ## Load the demo shop into the databases of `make run` (idempotent; needs an admin first)
	@scripts/mart.sh seed demo

test: ## Install what is missing, check generated code, start PostgreSQL + broker, build once, run every test
	@scripts/test.sh

k8s-check: ## Validate deploy/k8s (strict schemas, kustomize output, environment against docker-compose.yml)
	@scripts/validate-k8s.sh

build: ## Debug build of everything
	swift build

proto: ## Regenerate Sources/MartProto from proto/ (protoc + our release-built plugins)
	@scripts/gen-proto.sh

proto-baseline: ## Accept today's proto/ as the contract the breaking-change check compares against (deliberately)
	@scripts/gen-proto.sh --baseline

proto-check: ## Fail when the committed generated code differs from proto/
	@scripts/gen-proto.sh --check

lint: ## swift-format lint of Sources/ and Tests/ (generated code excluded); the gateway links no database or Kafka
	@scripts/check-modules.sh
	@swift format lint --strict --recursive $$(ls -d Sources/*/ Tests/*/ | grep -v MartProto)

format: ## Rewrite Sources/ and Tests/ in swift-format style
	@swift format format --in-place --recursive $$(ls -d Sources/*/ Tests/*/ | grep -v MartProto)

bench: ## Run the benchmarks under Benchmarks/ (figures go to docs/PERFORMANCE.md)
	@scripts/bench.sh
	@scripts/bench-gateway.sh
	@scripts/bench-catalog.sh
	@scripts/bench-orders.sh
	@scripts/bench-notifications.sh

bench-gateway: ## Only the gateway benchmark: gateway vs direct gRPC vs a bare route
	@scripts/bench-gateway.sh

bench-catalog: ## Only the catalog benchmark: reservations/s, and list/search through the gateway
	@scripts/bench-catalog.sh

bench-orders: ## Only the order-flow benchmark: orders placed -> PAID per second, p50/p99, through the edge
	@scripts/bench-orders.sh

bench-notifications: ## Only the notification benchmark: emails/s to a local SMTP server, event -> SMTP p50/p99
	@scripts/bench-notifications.sh

bench-tracing: ## What tracing costs: the gateway and order-flow benchmarks with tracing off, then on at 100 %
	@scripts/bench-tracing.sh

deploy-check: ## Bring deploy/docker-compose.yml up with Docker here (images built locally, host networking), drive an order to PAID, tear down
	@scripts/deploy-check.sh

fuzz: ## schemathesis against a private mart's /openapi.json as a customer and as an admin: no 5xx, no answer off the document
	@scripts/fuzz.sh

chaos: ## Seven processes on a private PostgreSQL + broker, 2000 orders (CHAOS_ORDERS) while every process is killed and restarted, the broker frozen and PostgreSQL stopped; then the invariants (report in .testbed/chaos/report.txt)
	@scripts/chaos.sh

chaos-short: ## make chaos at a tenth of its size on the debug build (about two minutes): 200 orders, each process killed once
	@swift build --product mart
	@CHAOS_MART_BINARY="$$(swift build --show-bin-path)/mart" CHAOS_ORDERS=200 CHAOS_RATE=8 CHAOS_KILLS=1 CHAOS_TERMS=1 \
		CHAOS_BROKER_FREEZE=5 CHAOS_PG_STOP=3 scripts/chaos.sh

clean: ## Remove build products and test scratch state (keeps the `make run` data in .mart/)
	rm -rf .build .build-tools .testbed/run-*
