package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// BlockedOnClientWrite waits up to 10s until a backend running exactly
// query is blocked sending its result (wait_event ClientWrite: its client,
// typically the proxy, stopped reading), asking over direct, and returns
// that backend's PID. It fails tb on timeout or when direct fails.
func BlockedOnClientWrite(tb testing.TB, direct *pgconn.PgConn, query string) string {
	tb.Helper()
	var pid string
	Eventually(tb, 10*time.Second, "the backend of "+query+" to block on ClientWrite", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res := direct.ExecParams(ctx, "select pid::text from pg_stat_activity where query = $1 and wait_event = 'ClientWrite'",
			[][]byte{[]byte(query)}, nil, nil, nil).Read()
		if res.Err != nil {
			tb.Fatal(res.Err)
		}
		if len(res.Rows) != 1 {
			return false
		}
		pid = string(res.Rows[0][0])
		return true
	})
	return pid
}
