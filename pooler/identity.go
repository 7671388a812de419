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
