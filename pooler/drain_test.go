package pooler

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDrain: during Shutdown, a client idle since before the drain is
// ended with 57P01 at once; a client that logged in just before it
// (within drainNewSessionGrace) still runs its transaction and is ended
// at its first idle point after the grace; a client holding a
// transaction open keeps it until the drain's deadline, and then gets
// 57P01 too rather than a silent close.
func TestDrain(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 4))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := proxyDSN(p, "", "")
	idle := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
	holder := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)
	if _, err := holder.Exec(ctx, "begin; select 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(drainNewSessionGrace + 100*time.Millisecond)
	fresh := connect(t, ctx, dsn, pgx.QueryExecModeSimpleProtocol)

	const deadline = 2500 * time.Millisecond
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sctx, scancel := context.WithTimeout(ctx, deadline)
		defer scancel()
		p.Shutdown(sctx)
	}()
	// The fresh client's transaction runs, though the drain has begun.
	tx, err := fresh.Begin(ctx)
	if err != nil {
		t.Fatalf("fresh client, BEGIN during the drain: %v", err)
	}
	if _, err := tx.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("fresh client during the drain: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("fresh client, COMMIT during the drain: %v", err)
	}
	// The idle client was ended between transactions.
	_, err = idle.Exec(ctx, "select 1")
	wantPgError(t, err, "FATAL", "57P01", "terminating connection because pgaudit is shutting down")
	// The fresh one is ended once its grace has passed.
	time.Sleep(time.Until(start.Add(drainNewSessionGrace + 200*time.Millisecond)))
	_, err = fresh.Exec(ctx, "select 1")
	wantPgError(t, err, "FATAL", "57P01", "terminating connection because pgaudit is shutting down")

	<-done
	if took := time.Since(start); took < deadline-100*time.Millisecond {
		t.Errorf("Shutdown returned after %v with a transaction open, before its deadline %v", took, deadline)
	}
	_, err = holder.Exec(ctx, "select 1")
	wantPgError(t, err, "FATAL", "57P01", "terminating connection because pgaudit is shutting down and shutdown_timeout has passed")
}
