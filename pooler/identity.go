package pooler

import (
	"context"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// lookupUser returns the secret of user for a login to database dbName:
// from the users file, else from auth_query on the server of that database
// (of AuthDatabase for the admin console). found is false for an unknown
// user; err means the lookup failed.
func (p *Proxy) lookupUser(ctx context.Context, dbName, user string) (secret wire.Secret, found bool, err error) {
	cfg := p.config()
	if secret, found = cfg.Users.Lookup(user); found || cfg.AuthQuery == nil {
		return secret, found, nil
	}
	target := dbName
	if p.isAdminDatabase(dbName) || cfg.AuthDatabase != "" {
		target = cfg.AuthDatabase
	}
	if target == "" {
		return wire.Secret{}, false, nil
	}
	db := p.lookupDatabase(target)
	if db == nil {
		// No such database: no server to ask. The exchange still runs
		// and fails like a wrong password.
		return wire.Secret{}, false, nil
	}
	return cfg.AuthQuery.Lookup(ctx, db.Upstream, user)
}

// setLogin makes the pool's future server connections log in with l when
// it differs from the current one (a client logged in after a password
// change, say). An empty l changes nothing.
func (p *Pool) setLogin(l *wire.ServerLogin) {
	if l.Empty() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.login != nil && p.login.Equal(l) {
		return
	}
	cfg := p.cfg.Copy()
	cfg.AfterNetConnect = nil
	cfg.Password = ""
	l.Apply(cfg)
	p.cfg = cfg
	p.login = l
}

// ServerLogin returns the credentials the pool of database and user logs
// in to its server with (what the last authenticated client of that user
// left: a password, an md5 hash or SCRAM keys), or nil when there is no
// such pool or it has none. The EXPLAIN sampler uses it to log in as the
// client's own role when the users file holds no plain-text password.
// Safe to call at any time; the result is immutable.
func (p *Proxy) ServerLogin(database, user string) *wire.ServerLogin {
	p.mu.Lock()
	pl := p.pools[poolKey{database, user}]
	p.mu.Unlock()
	if pl == nil {
		return nil
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.login
}
