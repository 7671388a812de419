package planadvisor

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgaudit-proxy/pgaudit/internal/pgtest"
	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// startCluster starts a private Postgres cluster for tests that create
// cluster-wide objects (roles) or extensions, stopped when t ends.
func startCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real Postgres; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if errors.Is(err, pgtest.ErrNoBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}
