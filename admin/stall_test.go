package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
	"github.com/pgaudit-proxy/pgaudit/pooler"
)

const hugeQuery = "SELECT repeat('x', 1000000) FROM generate_series(1, 600)"

// stalledClient logs in through the proxy with a raw connection, sends
// hugeQuery (about 600 MB of result) and never reads; it returns once the
// backend is blocked sending (the proxy stopped reading it because its
// write to the client blocks), with the backend's PID.
func stalledClient(t *testing.T, e *env, direct *pgconn.PgConn) (net.Conn, string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", e.proxy.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": "postgres", "application_name": "stalled"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	fe.Send(&pgproto3.Query{String: hugeQuery})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc, testutil.BlockedOnClientWrite(t, direct, hugeQuery)
}

// TestStalledClientDoesNotStallConsole (issue 12, hole 6): while one
// client's relay is blocked writing a result the client never reads, SHOW
// CLIENTS, SERVERS, DATABASES, LISTS, POOLS and /api/v1/clients answer at
// once (SHOW CLIENTS within 100 ms), and KILL disconnects the client and
// destroys its server connection. client_write_timeout stays at its
// default (60 s), far longer than the test.
func TestStalledClientDoesNotStallConsole(t *testing.T) {
	for _, mode := range []pooler.PoolMode{pooler.SessionMode, pooler.TransactionMode} {
		t.Run(string(mode), func(t *testing.T) {
			e := newEnv(t, envOptions{mode: mode, size: 2})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			direct, err := pgconn.Connect(ctx, cluster.DSN("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close(context.Background())
			admin := e.adminConn(ctx)
			nc, pid := stalledClient(t, e, direct)

			// Every answer must come within 5 s; SHOW CLIENTS's median of
			// five within 100 ms.
			query := func(sql string) ([][]string, time.Duration) {
				t.Helper()
				qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
				defer qcancel()
				start := time.Now()
				rows, err := admin.Query(qctx, sql)
				if err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				var out [][]string
				for rows.Next() {
					vals, err := rows.Values()
					if err != nil {
						t.Fatal(err)
					}
					var r []string
					for _, v := range vals {
						r = append(r, toString(v))
					}
					out = append(out, r)
				}
				if err := rows.Err(); err != nil {
					t.Fatalf("%s: %v (after %s)", sql, err, time.Since(start))
				}
				return out, time.Since(start)
			}
			var took []time.Duration
			var clients [][]string
			for range 5 {
				var d time.Duration
				clients, d = query("SHOW CLIENTS")
				took = append(took, d)
			}
			slices.Sort(took)
			if took[2] > 100*time.Millisecond {
				t.Errorf("SHOW CLIENTS took %v (median %v), want within 100 ms", took, took[2])
			}
			if !strings.Contains(strings.Join(flatten(clients), " "), "stalled") {
				t.Errorf("SHOW CLIENTS does not list the stalled client: %v", clients)
			}
			servers, _ := query("SHOW SERVERS")
			if !strings.Contains(" "+strings.Join(flatten(servers), " ")+" ", " "+pid+" ") {
				t.Errorf("SHOW SERVERS does not list the stalled client's server (pid %s): %v", pid, servers)
			}
			for _, sql := range []string{"SHOW DATABASES", "SHOW LISTS", "SHOW POOLS"} {
				query(sql)
			}
			hc := http.Client{Timeout: 5 * time.Second}
			resp, err := hc.Get(e.base + "/api/v1/clients")
			if err != nil {
				t.Fatalf("/api/v1/clients: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), "stalled") {
				t.Errorf("/api/v1/clients: %s", body)
			}

			// KILL disconnects it (after the bytes already buffered) and
			// its server connection is destroyed.
			kctx, kcancel := context.WithTimeout(ctx, 5*time.Second)
			start := time.Now()
			_, err = admin.Exec(kctx, "KILL postgres")
			kcancel()
			if err != nil {
				t.Fatalf("KILL: %v (after %s)", err, time.Since(start))
			}
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, nc)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the stalled client's connection is still open 10 s after KILL")
			}
			testutil.Eventually(t, 10*time.Second, "the backend of the killed client to end", func() bool {
				res, err := direct.Exec(ctx, "select count(*) from pg_stat_activity where pid = "+pid).ReadAll()
				return err == nil && string(res[0].Rows[0][0]) == "0"
			})
			testutil.Eventually(t, 5*time.Second, "SHOW CLIENTS to be empty", func() bool {
				rows, _ := query("SHOW CLIENTS")
				return len(rows) == 0
			})
			// The proxy still serves.
			c, err := pgx.Connect(ctx, e.dsn("postgres", "postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			var one int
			if err := c.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("after KILL: %v", err)
			}
		})
	}
}

func flatten(rows [][]string) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r...)
	}
	return out
}

func toString(v any) string {
	if v == nil {
		return ""
	}
	return strings.TrimSpace(fmt.Sprint(v))
}
