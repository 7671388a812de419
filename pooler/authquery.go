package pooler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// DefaultAuthQuery is PgBouncer's default auth_query.
const DefaultAuthQuery = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"

// authQueryCacheMax bounds the cached lookups (found or not), so that a
// client trying many names cannot grow memory without bound.
const authQueryCacheMax = 10000

// AuthQuery looks up the secret of a user that is not in the users file
// on the server itself, as PgBouncer's auth_query does: it connects as
// User (with Password, or none when the server trusts the proxy) to the
// server of the database the client asked for (the database named DBName
// there, when set) and runs Query with the user name as $1. The query
// returns one row of (user name, secret) for a known user, where the
// secret is a pg_authid password (SCRAM verifier or md5 hash; NULL: the
// user has no password), and no row for an unknown one.
//
// Results, found or not, are cached for CacheTTL (default 10s), so a
// password change takes effect within that time. One connection per
// server and database is kept open and queries on it are serialized;
// Close closes them.
// An AuthQuery is safe for concurrent use; set its fields before the
// first Lookup.
type AuthQuery struct {
	User     string
	Password string
	Query    string
	DBName   string
	CacheTTL time.Duration
	// Timeout bounds one lookup, connecting included (default 5s).
	Timeout time.Duration

	mu     sync.Mutex
	closed bool
	conns  map[string]*authConn
	cache  map[string]authCacheEntry
}

type authConn struct {
	mu   sync.Mutex
	conn *pgconn.PgConn
}

type authCacheEntry struct {
	secret  wire.Secret
	found   bool
	expires time.Time
}

// String describes the lookup without its password.
func (a *AuthQuery) String() string {
	return fmt.Sprintf("auth_query(user=%s, dbname=%s)", a.User, a.DBName)
}

// Lookup returns the secret of user on the server that up points to. An
// error means the lookup itself failed (server unreachable, bad query);
// the caller must not treat it as an unknown user.
func (a *AuthQuery) Lookup(ctx context.Context, up *pgconn.Config, user string) (wire.Secret, bool, error) {
	dbname := up.Database
	if a.DBName != "" {
		dbname = a.DBName
	}
	target := fmt.Sprintf("%s\x00%d\x00%s", up.Host, up.Port, dbname)
	key := target + "\x00" + user
	now := time.Now()
	ttl := a.CacheTTL
	if ttl == 0 {
		ttl = 10 * time.Second
	}

	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return wire.Secret{}, false, errors.New("auth_query: closed")
	}
	if e, ok := a.cache[key]; ok && now.Before(e.expires) {
		a.mu.Unlock()
		return e.secret, e.found, nil
	}
	if a.conns == nil {
		a.conns = map[string]*authConn{}
		a.cache = map[string]authCacheEntry{}
	}
	ac := a.conns[target]
	if ac == nil {
		ac = &authConn{}
		a.conns[target] = ac
	}
	a.mu.Unlock()

	timeout := a.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	secret, found, err := a.query(ctx, ac, up, dbname, user)
	if err != nil {
		// Forget a target that has no connection (a database name that
		// does not exist, through a "*" entry, say), so that clients
		// cannot grow the map with made-up names.
		a.mu.Lock()
		ac.mu.Lock()
		if ac.conn == nil && a.conns[target] == ac {
			delete(a.conns, target)
		}
		ac.mu.Unlock()
		a.mu.Unlock()
		return wire.Secret{}, false, err
	}
	if ttl > 0 {
		a.mu.Lock()
		if len(a.cache) >= authQueryCacheMax {
			for k, e := range a.cache {
				if !now.Before(e.expires) {
					delete(a.cache, k)
				}
			}
			if len(a.cache) >= authQueryCacheMax {
				clear(a.cache)
			}
		}
		if !a.closed {
			a.cache[key] = authCacheEntry{secret: secret, found: found, expires: now.Add(ttl)}
		}
		a.mu.Unlock()
	}
	return secret, found, nil
}

func (a *AuthQuery) query(ctx context.Context, ac *authConn, up *pgconn.Config, dbname, user string) (wire.Secret, bool, error) {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if ac.conn == nil || ac.conn.IsClosed() {
			cfg := up.Copy()
			cfg.User = a.User
			cfg.Password = a.Password
			cfg.Database = dbname
			cfg.AfterNetConnect = nil
			cfg.RuntimeParams = map[string]string{"application_name": "pgaudit auth_query"}
			conn, err := pgconn.ConnectConfig(ctx, cfg)
			if err != nil {
				return wire.Secret{}, false, fmt.Errorf("auth_query: connect as %q: %w", a.User, err)
			}
			ac.conn = conn
		}
		query := a.Query
		if query == "" {
			query = DefaultAuthQuery
		}
		res := ac.conn.ExecParams(ctx, query, [][]byte{[]byte(user)}, nil, nil, nil).Read()
		if res.Err != nil {
			var pe *pgconn.PgError
			if errors.As(res.Err, &pe) || attempt > 0 || ctx.Err() != nil {
				if !errors.As(res.Err, &pe) {
					ac.conn.Close(context.Background())
					ac.conn = nil
				}
				return wire.Secret{}, false, fmt.Errorf("auth_query: %w", res.Err)
			}
			// The kept connection died (server restart, idle
			// timeout): reconnect once.
			ac.conn.Close(context.Background())
			ac.conn = nil
			continue
		}
		if len(res.Rows) == 0 {
			return wire.Secret{}, false, nil
		}
		row := res.Rows[0]
		if len(row) != 2 {
			return wire.Secret{}, false, fmt.Errorf("auth_query returned %d columns, want 2 (user name, secret)", len(row))
		}
		if string(row[0]) != user {
			return wire.Secret{}, false, fmt.Errorf("auth_query returned user %q for %q", row[0], user)
		}
		if row[1] == nil {
			return wire.Secret{}, true, nil // a user without a password
		}
		s, err := wire.ParseSecret(string(row[1]))
		if err != nil {
			return wire.Secret{}, false, fmt.Errorf("auth_query: secret of %q: %w", user, err)
		}
		return s, true, nil
	}
}

// Close closes the kept connections. Lookups after Close fail.
func (a *AuthQuery) Close() {
	a.mu.Lock()
	a.closed = true
	conns := a.conns
	a.conns = nil
	clear(a.cache)
	a.mu.Unlock()
	for _, ac := range conns {
		ac.mu.Lock()
		if ac.conn != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ac.conn.Close(ctx)
			cancel()
			ac.conn = nil
		}
		ac.mu.Unlock()
	}
}
