# The README's test command is `make test`.
GO ?= go

.PHONY: test vet build fuzz bench

build:
	$(GO) build -o bin/pgaudit ./cmd/pgaudit

vet:
	$(GO) vet ./...
	@# The relay and the log readers never link cgo (pg_query): they see the
	@# analysis only through internal/event, and the audit log through internal/auditlog;
	@# tracing gets its statements through internal/event too.
	CGO_ENABLED=0 $(GO) build ./internal/event ./internal/auditlog ./internal/lru ./internal/otlplog ./wire ./pooler ./querylog ./tracing
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "not gofmt'd: $$unformatted"; exit 1; fi

# pooler's tests run their proxies with a 5 ms relay_park_after, so
# sessions park and resume between nearly every step (go test ./pooler
# -relay-park-after=1s runs them at the default instead).
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

# Short fuzz runs of every network decoder, of the proxy's startup and
# authentication handling driven as a byte stream (seed corpora live in
# testdata/fuzz), of the shared SQL scanner, and of the fleet export decoder
# (what a peer answers).
fuzz:
	$(GO) test ./wire -run XXX -fuzz FuzzParseStartup -fuzztime 20s
	$(GO) test ./wire -run XXX -fuzz FuzzReader -fuzztime 20s
	$(GO) test ./wire -run XXX -fuzz FuzzSCRAM -fuzztime 20s
	$(GO) test ./pooler -run XXX -fuzz FuzzStartupAuth -fuzztime 30s
	$(GO) test ./internal/sqlscan -run XXX -fuzz FuzzScan -fuzztime 20s
	$(GO) test ./fleet -run XXX -fuzz FuzzDecodeExport -fuzztime 20s

bench:
	bash bench/pgbench.sh
