package pgtest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestStartQueryRestartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	query := func() string {
		conn, err := pgconn.Connect(ctx, c.DSN(""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		res := conn.ExecParams(ctx, "select current_user", nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return string(res.Rows[0][0])
	}
	if got := query(); got != "postgres" {
		t.Fatalf("current_user = %q", got)
	}
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got := query(); got != "postgres" {
		t.Fatalf("after restart current_user = %q", got)
	}
	out, err := c.Psql(ctx, "", "-Atc", "select 40+2")
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql: %v %q", err, out)
	}
}

func TestLazy(t *testing.T) {
	// Never used: nothing starts, Stop does nothing, later use fails.
	idle := Lazy(Options{})
	idle.Stop()
	if idle.Dir != "" || idle.Ready() == nil {
		t.Fatalf("unused lazy cluster: dir %q, Ready %v", idle.Dir, idle.Ready())
	}

	c := Lazy(Options{})
	port := c.Port
	if port == 0 || c.Dir != "" {
		t.Fatalf("before use: port %d, dir %q", port, c.Dir)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, c.DSN("")) // starts it
	if err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if c.Port != port || c.Dir == "" || c.Ready() != nil {
		t.Fatalf("after use: port %d (was %d), dir %q, Ready %v", c.Port, port, c.Dir, c.Ready())
	}
}
