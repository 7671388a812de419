package pooler

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/wire"
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

// idleConsole is an AdminHandler that logs the user in and then reads
// until the client leaves, like an admin console nobody types into.
type idleConsole struct{}

func (idleConsole) ServeAdmin(_ context.Context, c *wire.Conn, _ string) error {
	if err := c.WriteRaw(wire.AppendReadyForQuery(wire.AppendAuthOK(nil), 'I')); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	for {
		if _, _, err := c.R.ReadMessage(); err != nil {
			return err
		}
	}
}

// TestDrainIgnoresAdminConsoles: an open admin console (the operator's
// psql that sent SHUTDOWN WAIT_FOR_CLIENTS, an exporter's connection) does
// not hold the drain until its deadline: Shutdown returns once the last
// client has left, and Close then cuts the console.
func TestDrainIgnoresAdminConsoles(t *testing.T) {
	p := testProxy(t, func(c *Config) {
		withMode(TransactionMode, 2)(c)
		c.Admin, c.AdminUsers = idleConsole{}, []string{"postgres"}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	console, err := pgconn.Connect(ctx, proxyDSN(p, "pgaudit", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close(context.Background())
	client := connect(t, ctx, proxyDSN(p, "", ""), pgx.QueryExecModeSimpleProtocol)
	if _, err := client.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if n := p.AdminClientCount(); n != 1 {
		t.Fatalf("%d admin consoles, want 1", n)
	}
	time.Sleep(drainNewSessionGrace) // the client is past its grace
	start := time.Now()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	p.Shutdown(sctx)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Shutdown took %v with only an admin console left", took)
	}
	if sctx.Err() != nil {
		t.Error("Shutdown waited for its deadline")
	}
	_, err = client.Exec(ctx, "select 1")
	wantPgError(t, err, "FATAL", "57P01", "terminating connection because pgaudit is shutting down")
}
