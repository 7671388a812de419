package pooler

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Settings tracking: the client's startup and current settings, applying
// them to a server connection, and what RESET/DISCARD return to.

// heldReply is what is held back from the client until a restore query
// is answered: the server's ParameterStatus (name, value pairs) and its
// ReadyForQuery.
type heldReply struct {
	params []string
	z      []byte
}

// holdLocked returns s.held, making it first; s.mu held.
func (s *Session) holdLocked() *heldReply {
	if s.held == nil {
		s.held = &heldReply{}
	}
	return s.held
}

// gucsKey serializes settings canonically, so that equal settings (most
// clients of a pool have the same, often none) are recognized with one
// string comparison per acquire.
func gucsKey(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return internGucsKey(b.String())
}

// gucsKeys interns settings keys: equal keys of different sessions are
// then one string, and applySettings's comparison on every acquire stops
// at the pointer instead of comparing the bytes (memeqbody was 0.8 % of
// the proxy's user time under pgbench -S). Bounded: past maxGucsKeys
// distinct keys, new ones are compared byte by byte as before.
var gucsKeys struct {
	mu sync.Mutex
	m  map[string]string
}

const maxGucsKeys = 4096

// internGucsKey returns the interned copy of k (see gucsKeys).
func internGucsKey(k string) string {
	gucsKeys.mu.Lock()
	defer gucsKeys.mu.Unlock()
	if w, ok := gucsKeys.m[k]; ok {
		return w
	}
	if gucsKeys.m == nil {
		gucsKeys.m = make(map[string]string)
	}
	if len(gucsKeys.m) < maxGucsKeys {
		gucsKeys.m[k] = k
	}
	return k
}

// applySettings makes srv's session settings equal to the client's.
func (s *Session) applySettings(ctx context.Context, srv *Server) error {
	if srv.gucsKey == s.gucsKey {
		return nil
	}
	var sql strings.Builder
	var sets []string
	for name := range srv.gucs {
		if _, ok := s.gucs[name]; !ok {
			fmt.Fprintf(&sql, "RESET %s;", quoteIdent(name))
		}
	}
	for name, v := range s.gucs {
		if cur, ok := srv.gucs[name]; !ok || cur != v {
			sets = append(sets, setConfigCall(name, v))
		}
	}
	if len(sets) > 0 {
		sql.WriteString("SELECT " + strings.Join(sets, ", "))
	}
	if sql.Len() == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := srv.Exec(cctx, sql.String())
	if err != nil {
		return wire.FromUpstream(err, "ERROR")
	}
	if res.Err != nil {
		return &wire.Error{Severity: "ERROR", Code: res.Err.Code, Message: res.Err.Message, Detail: res.Err.Detail, Hint: res.Err.Hint}
	}
	clear(srv.gucs)
	for k, v := range s.gucs {
		srv.gucs[k] = v
	}
	srv.gucsKey = s.gucsKey
	return nil
}

// snapshotSettings reads the session-level settings of srv after the
// client changed some, and makes them the client's. Called by the reader
// after detaching srv.
func (s *Session) snapshotSettings(srv *Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := srv.Exec(ctx, "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'")
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	m := make(map[string]string, len(res.Rows))
	for _, r := range res.Rows {
		if len(r) == 2 {
			m[strings.ToLower(r[0])] = r[1]
		}
	}
	// RESET, RESET ALL and DISCARD ALL return a setting to the value the
	// server connection started with, which is the pool's, not this
	// client's: on a direct connection they return to the client's
	// startup value. Put those back.
	var sets []string
	for name, v := range s.startupGUCs {
		if _, ok := m[name]; !ok {
			sets = append(sets, setConfigCall(name, v))
		}
	}
	if len(sets) > 0 {
		slices.Sort(sets)
		res, err := srv.Exec(ctx, "SELECT "+strings.Join(sets, ", "))
		if err != nil {
			return err
		}
		if res.Err != nil {
			return res.Err
		}
		for name, v := range s.startupGUCs {
			if _, ok := m[name]; !ok {
				m[name] = v
			}
		}
	}
	key := gucsKey(m)
	s.mu.Lock()
	s.gucs, s.gucsKey = m, key
	s.mu.Unlock()
	srv.gucs = make(map[string]string, len(m))
	for k, v := range m {
		srv.gucs[k] = v
	}
	srv.gucsKey = key
	return nil
}

// restoreStartupLocked appends to out, after a Query that may have
// returned settings to their reset values (RESET, DISCARD ALL, SET ...
// DEFAULT), a query that puts the client's startup values back where a
// setting is at its reset value: on a server connection that is the
// pool's value, while on a direct connection it is the client's startup
// value. It runs in the same transaction state as the client's Query, so
// a rollback undoes both. Its answers are swallowed, and the
// ParameterStatus messages of both are merged, as Postgres reports only
// the values that changed by the time it sends ReadyForQuery; s.mu held.
func (s *Session) restoreStartupLocked(out []byte) []byte {
	var sql strings.Builder
	sql.WriteString("SELECT pg_catalog.set_config(s.name, v.setting, false) FROM pg_catalog.pg_settings s JOIN (VALUES ")
	for i, name := range sortedKeys(s.startupGUCs) {
		if i > 0 {
			sql.WriteString(", ")
		}
		sql.WriteString("(" + quoteLiteral(name) + ", " + quoteLiteral(s.startupGUCs[name]) + ")")
	}
	sql.WriteString(") AS v(name, setting) ON pg_catalog.lower(s.name) = v.name WHERE s.source <> 'session'")
	s.incInFlightLocked()
	s.queue.push(pending{kind: pendQuery, swallow: true})
	return appendQuery(out, sql.String())
}

// releaseHeldLocked sends what was held for a Query with holdZ: the
// settings that changed since the client last heard of them, then its
// ReadyForQuery; s.mu held.
func (s *Session) releaseHeldLocked() {
	if s.held == nil {
		return
	}
	final := map[string]string{}
	var order []string
	for i := 0; i+1 < len(s.held.params); i += 2 {
		name := s.held.params[i]
		if _, seen := final[name]; !seen {
			order = append(order, name)
		}
		final[name] = s.held.params[i+1]
	}
	for _, name := range order {
		if v, ok := s.reported[name]; ok && v == final[name] {
			continue
		}
		s.ownReportedLocked()
		s.reported[name] = final[name]
		s.sendLocked(wire.AppendParameterStatus(nil, name, final[name]))
	}
	if s.held.z != nil {
		s.sendLocked(s.held.z)
	}
	s.held = nil
}

// setConfigCall is the SQL expression that sets name to v for the session.
func setConfigCall(name, v string) string {
	return "pg_catalog.set_config(" + quoteLiteral(name) + ", " + quoteLiteral(v) + ", false)"
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = " E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
