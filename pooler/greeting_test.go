package pooler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// greetingOf logs in to addr with params and returns the startup messages
// up to ReadyForQuery, each as "Type" or "ParameterStatus name=value", and
// the connection (for more queries).
func greetingOf(t *testing.T, addr string, params map[string]string) ([]string, *wireConn) {
	t.Helper()
	c := newWireConn(t, dialRaw(t, addr))
	c.addr = addr
	all := map[string]string{"user": "postgres", "database": "postgres"}
	for k, v := range params {
		all[k] = v
	}
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: all})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := c.receive()
		if err != nil {
			t.Fatalf("startup on %s: %v", addr, err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			got = append(got, "ParameterStatus "+m.Name+"="+m.Value)
			c.params[m.Name] = m.Value
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup on %s: %s", addr, m.Message)
		default:
			got = append(got, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return got, c
		}
	}
}

// TestGreetingFromCache checks the greeting of transaction-mode logins
// that the pool answers from its cached parameters (per
// application_name, see greetingFor): AuthenticationOk, the
// ParameterStatus set Postgres itself reports for the same login (in name
// order), BackendKeyData, ReadyForQuery; the same on every login, for
// more application names than the cache holds, and unchanged after a
// session changed one of its reported parameters.
func TestGreetingFromCache(t *testing.T) {
	p := testProxy(t, withMode(TransactionMode, 2))
	names := []string{"", "pgbench", "app-b"}
	for i := range maxGreetings + 2 {
		names = append(names, fmt.Sprintf("many-%d", i))
	}
	for round := range 2 {
		for _, app := range names {
			params := map[string]string{}
			if app != "" {
				params["application_name"] = app
			}
			direct, dc := greetingOf(t, directAddr(), params)
			dc.terminate()
			got, c := greetingOf(t, p.Addr().String(), params)
			if len(got) < 4 || got[0] != "AuthenticationOk" || got[len(got)-2] != "BackendKeyData" || got[len(got)-1] != "ReadyForQuery" {
				t.Fatalf("round %d, application_name %q: greeting %q", round, app, got)
			}
			ps := got[1 : len(got)-2]
			if !slices.IsSorted(ps) {
				t.Errorf("round %d, application_name %q: ParameterStatus not in name order: %q", round, app, ps)
			}
			var want []string
			for _, m := range direct {
				if strings.HasPrefix(m, "ParameterStatus ") {
					want = append(want, m)
				}
			}
			slices.Sort(want)
			if !slices.Equal(ps, want) {
				t.Errorf("round %d, application_name %q: ParameterStatus through the proxy\n%q\ndirectly\n%q", round, app, ps, want)
			}
			if round == 0 && app == "pgbench" {
				// A session that changes a reported parameter must
				// not change what later logins are told.
				c.send(&pgproto3.Query{String: "set application_name = 'changed'; set DateStyle = 'German'"})
				c.recvUntil(func(m pgproto3.BackendMessage) bool {
					if ps, ok := m.(*pgproto3.ParameterStatus); ok {
						c.params[ps.Name] = ps.Value
					}
					return isType[*pgproto3.ReadyForQuery](m)
				})
				if c.params["application_name"] != "changed" || !strings.HasPrefix(c.params["DateStyle"], "German") {
					t.Errorf("after SET: reported %q / %q", c.params["application_name"], c.params["DateStyle"])
				}
			}
			c.terminate()
		}
	}
}
