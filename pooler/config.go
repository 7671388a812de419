// Package pooler owns client sessions, server connection pools and the relay
// between them: pools keyed by (database, user), acquire and release with a
// FIFO wait queue and timeouts, session and transaction pool modes,
// prepared-statement mapping and session-state tracking in transaction mode,
// cancel-key mapping, the server connection lifecycle and pool statistics.
// It never parses SQL beyond the cheap scans in sqlscan.go, and it never
// waits on the analyzer: events go to an event.Sink that does not block.
package pooler

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// PoolMode says when a server connection goes back to the pool.
type PoolMode string

const (
	// SessionMode holds a server connection for the whole client session.
	SessionMode PoolMode = "session"
	// TransactionMode holds it only while a transaction is open.
	TransactionMode PoolMode = "transaction"
)

// ParsePoolMode validates a pool_mode value.
func ParsePoolMode(s string) (PoolMode, error) {
	switch PoolMode(s) {
	case SessionMode, TransactionMode:
		return PoolMode(s), nil
	case "":
		return SessionMode, nil
	}
	return "", fmt.Errorf("invalid pool_mode %q: want session or transaction", s)
}

// PoolSettings are the per-database pool settings. Zero durations disable the
// corresponding timeout.
type PoolSettings struct {
	Mode                 PoolMode
	Size                 int // default_pool_size
	MinSize              int // min_pool_size
	ReserveSize          int // reserve_pool_size
	ReserveTimeout       time.Duration
	MaxDBConnections     int // max_db_connections, across users; 0 = unlimited
	QueryWaitTimeout     time.Duration
	ServerResetQuery     string
	ServerLifetime       time.Duration
	ServerIdleTimeout    time.Duration
	ServerConnectTimeout time.Duration
	ServerCheckDelay     time.Duration
	ServerCheckQuery     string
	// ServerLoginRetry is the first back-off after a failed connect; it
	// doubles up to 8x while the server stays unreachable.
	ServerLoginRetry       time.Duration
	IdleTransactionTimeout time.Duration
	ClientIdleTimeout      time.Duration
	// ClientWriteTimeout drops a client whose socket stays full (it does
	// not read what it asked for) this long, and destroys its server
	// connection; zero waits forever, as PgBouncer does.
	ClientWriteTimeout time.Duration
	QueryTimeout       time.Duration
	// MaxPreparedStatements caps the protocol-level prepared statements kept
	// per server connection in transaction mode (an LRU).
	MaxPreparedStatements int
	// PinOnSessionState pins a transaction-mode client to its server
	// connection after a statement that needs a session.
	PinOnSessionState bool
}

// Defaults of the client limits in Config.
const (
	DefaultMaxLoginClients    = 1024
	DefaultClientLoginTimeout = 15 * time.Second
)

// DefaultPoolSettings returns PgBouncer-like defaults.
func DefaultPoolSettings() PoolSettings {
	return PoolSettings{
		Mode:                  SessionMode,
		Size:                  20,
		ReserveTimeout:        5 * time.Second,
		QueryWaitTimeout:      120 * time.Second,
		ServerResetQuery:      "DISCARD ALL",
		ServerLifetime:        time.Hour,
		ServerIdleTimeout:     10 * time.Minute,
		ServerConnectTimeout:  15 * time.Second,
		ServerCheckDelay:      30 * time.Second,
		ServerCheckQuery:      "select 1",
		ServerLoginRetry:      250 * time.Millisecond,
		ClientWriteTimeout:    60 * time.Second,
		MaxPreparedStatements: 200,
		PinOnSessionState:     true,
	}
}

// Database maps a client-visible database name to an upstream server.
type Database struct {
	// Name is what clients put in their DSN.
	Name string
	// Upstream is the connection config for the server: host, port,
	// dbname, sslmode, and, when ForceUser is set, user and password.
	Upstream *pgconn.Config
	// ForceUser makes every client use Upstream's user and password;
	// otherwise the client's user name is used with the password from the
	// users file.
	ForceUser bool
	Pool      PoolSettings
}

// Config is the proxy's configuration. The pooler reads it; cmd/pgaudit
// builds it from flags and the TOML file.
type Config struct {
	Listen string
	// SoReuseport opens the listener with SO_REUSEPORT (so_reuseport), so
	// several pgaudit processes can listen on one host:port; the kernel
	// spreads new connections across them. Set PeerID and Peers too, or
	// a CancelRequest may reach a process that does not know its client.
	SoReuseport bool
	// PeerID (peer_id, 1..MaxPeerID; 0 = off) is encoded in every cancel
	// key this process hands out, and Peers maps the other processes' ids
	// to an address of theirs (host:port, or a unix socket path) where a
	// CancelRequest for one of their clients is forwarded (peers.go).
	PeerID int
	Peers  map[int]string
	// PeerListen (peer_listen) is this process's own address for cancels
	// forwarded by its peers (host:port, or a unix socket path): with
	// so_reuseport the shared listen address cannot tell processes apart.
	// It reads only a plain 16-byte CancelRequest.
	PeerListen string
	// Databases by client-visible name. "*" is a fallback entry used for
	// any name, whose Upstream.Database is replaced by the client's.
	Databases map[string]*Database
	// AuthType is trust, password, md5 or scram-sha-256.
	AuthType string
	// Users maps user names to secrets. With trust, a non-nil Users (or an
	// AuthQuery) limits who may log in to the users it knows; others get
	// FATAL 28000 role "NAME" does not exist, as from Postgres. A nil
	// Users with trust admits any user name.
	Users *wire.Users
	// AuthQuery, when set, looks up users missing from Users on the
	// server (PgBouncer's auth_query). For a client of an admin database
	// it runs against the database entry named AuthDatabase; when that is
	// empty, admin logins use Users only.
	AuthQuery    *AuthQuery
	AuthDatabase string
	// TLS is the client-side TLS config (nil disables TLS).
	TLS *tls.Config
	// ClientTLS is disable, allow or require.
	ClientTLS string

	// MaxClientConn caps authenticated clients (admin consoles
	// included); clients still logging in count toward MaxLoginClients
	// instead.
	MaxClientConn int
	// MaxLoginClients caps connections in startup or authentication
	// (DefaultMaxLoginClients when <= 0). When it is reached, a new
	// connection makes the proxy close the oldest one that has not yet
	// sent a StartupMessage (else the oldest still logging in) with FATAL
	// 53300, so a flood of silent sockets cannot lock real clients out.
	MaxLoginClients int
	// ClientLoginTimeout bounds startup and authentication
	// (DefaultClientLoginTimeout when <= 0).
	ClientLoginTimeout time.Duration
	MaxMessageSize     int
	// ClientBufferBudget caps the bytes held, across all clients, in
	// buffers for client messages larger than a connection's own small
	// buffers (wire.DefaultClientBufferBudget when <= 0). A client whose
	// message would exceed it gets FATAL 53200 and is closed.
	ClientBufferBudget int64
	// AdminDatabases are virtual database names that open the admin
	// console instead of a server connection (default "pgaudit" and
	// "pgbouncer"); AdminUsers may use them.
	AdminDatabases []string
	AdminUsers     []string
	// Admin serves admin-console sessions; nil disables the console.
	Admin AdminHandler
	// CaptureParams keeps bind parameter values on events (for EXPLAIN
	// samples); they are never logged unless the audit log says so.
	CaptureParams bool
	// ResultSampleEvery makes each session hash the result rows (DataRow
	// bytes, with a keyed per-process hash) of about one statement in
	// ResultSampleEvery, picked at random, for the cache-candidate rule
	// (event.Event.ResultHash). 0 means DefaultResultSampleEvery; a
	// negative value turns result hashing off.
	ResultSampleEvery int
	// RelayParkAfter (relay_park_after) is how long a plain TCP or
	// Unix-socket session stays idle before it is parked: its goroutine
	// ends and its socket is watched by the Proxy's epoll loops (relay.go,
	// docs/relay.md). DefaultRelayParkAfter when <= 0. Read by Serve; a
	// reload does not change it.
	RelayParkAfter time.Duration
}

// DefaultResultSampleEvery is the default of Config.ResultSampleEvery.
const DefaultResultSampleEvery = 16

// AdminHandler serves a client connected to an admin database. The proxy
// has authenticated the client and checked it is an admin user; Serve sends
// the welcome (AuthenticationOk ... ReadyForQuery) itself and returns when
// the client leaves. It is called on the client's own goroutine.
type AdminHandler interface {
	ServeAdmin(ctx context.Context, c *wire.Conn, user string) error
}
