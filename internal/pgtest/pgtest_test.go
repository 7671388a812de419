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
