package pooler

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestPsqlThroughProxy(t *testing.T) {
	for _, mode := range []PoolMode{SessionMode, TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			p := testProxy(t, withMode(mode, 2))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", proxyDSN(p, "", "&application_name=smoke"),
				"-c", "select 1; select 2", "-c", "select current_setting('application_name')",
				"-c", "create temp table if not exists t(x int)", "-c", "select count(*) from pg_class").CombinedOutput()
			if err != nil {
				t.Fatalf("psql: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if lines[0] != "1" || lines[1] != "2" || lines[2] != "smoke" {
				t.Fatalf("unexpected psql output: %q", out)
			}
		})
	}
}
