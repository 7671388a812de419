package main

import (
	"os/exec"
	"strings"
	"testing"
)

const modulePath = "github.com/pgaudit-proxy/pgaudit/"

// layers ranks this module's packages: a package may import only packages
// of a lower layer, or the same-layer packages listed in sideways
// (docs/architecture.md).
var layers = map[string]int{
	"cmd/pgaudit": 5,
	"admin":       4, "report": 4,
	"fleet":  3,
	"pooler": 2, "analyzer": 2, "planadvisor": 2, "querylog": 2, "tracing": 2, "internal/otlplog": 2,
	"wire": 1, "rules": 1,
	"internal/event": 1, "internal/auditlog": 1, "internal/sqlscan": 1, "internal/lru": 1,
	"internal/pgtree": 1, "internal/pgtest": 1, "internal/testutil": 1,
	"bench/gen": 5, "bench/idle": 5,
}

var sideways = map[string]bool{
	"report -> admin":                       true,
	"planadvisor -> analyzer":               true,
	"internal/auditlog -> internal/event":   true,
	"internal/auditlog -> internal/sqlscan": true,
	"internal/testutil -> internal/pgtest":  true,
}

// noCgo are the packages that must never link pg_query (the relay, the log
// readers, tracing and what they share).
var noCgo = []string{"wire", "pooler", "querylog", "tracing", "internal/event", "internal/auditlog", "internal/lru", "internal/sqlscan", "internal/otlplog"}

func goList(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestImportGraph checks that imports point one way, cmd → admin/report →
// fleet → pooler/analyzer/planadvisor/querylog/tracing → wire, rules and internal
// packages → nothing of ours, and that the relay side never depends on the
// analyzer's cgo.
func TestImportGraph(t *testing.T) {
	for _, line := range goList(t, "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...") {
		fields := strings.Fields(line)
		from := strings.TrimPrefix(fields[0], modulePath)
		lf, ok := layers[from]
		if !ok {
			t.Errorf("package %s has no layer: add it to layers and docs/architecture.md", from)
			continue
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, modulePath) {
				continue
			}
			to := strings.TrimPrefix(imp, modulePath)
			lt, ok := layers[to]
			if !ok {
				t.Errorf("package %s has no layer", to)
				continue
			}
			if lt < lf || lt == lf && sideways[from+" -> "+to] {
				continue
			}
			t.Errorf("%s (layer %d) imports %s (layer %d): imports must point down (docs/architecture.md)", from, lf, to, lt)
		}
	}
	for _, pkg := range noCgo {
		for _, dep := range goList(t, "-deps", "./"+pkg) {
			if strings.Contains(dep, "pg_query_go") || dep == modulePath+"analyzer" {
				t.Errorf("%s depends on %s: the relay side must not link pg_query", pkg, dep)
			}
		}
	}
}
