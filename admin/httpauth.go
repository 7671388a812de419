package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
)

// HTTPAuth protects the HTTP admin listener.
type HTTPAuth struct {
	// Token, when set, is accepted as "Authorization: Bearer TOKEN".
	Token string
	// User and Password, when both set, are accepted as HTTP basic
	// authentication.
	User, Password string
	// Hosts are the Host header names answered besides IP literals,
	// "localhost" and names under ".localhost" (DNS-rebinding
	// protection: a page on another site that resolves its own name to
	// this address cannot read the admin interface). Put the name the
	// listener is reached by here.
	Hosts []string
}

// Enabled reports whether credentials are configured.
func (h HTTPAuth) Enabled() bool { return h.Token != "" || (h.User != "" && h.Password != "") }

// CheckListen returns an error when addr is not a loopback address and
// no credentials are configured: the admin interface shows client
// addresses, users, query shapes and Go profiles, which are not served to
// a network without authentication. An empty addr (no listener) is fine.
func (h HTTPAuth) CheckListen(addr string) error {
	if addr == "" || h.Enabled() || IsLoopbackAddr(addr) {
		return nil
	}
	return fmt.Errorf("admin_listen %s is not a loopback address: set admin_token (bearer) or admin_user and admin_password (basic auth), or listen on 127.0.0.1", addr)
}

// IsLoopbackAddr reports whether addr (host:port) names a loopback
// interface: "localhost" or a loopback IP. An empty host (all
// interfaces) is not loopback.
func IsLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// allowedHost reports whether the Host header value may be answered.
func (h HTTPAuth) allowedHost(hostport string) bool {
	host := hostport
	if hst, _, err := net.SplitHostPort(hostport); err == nil {
		host = hst
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" {
		return false
	}
	if net.ParseIP(host) != nil {
		return true // an IP literal cannot be rebound
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	for _, a := range h.Hosts {
		if strings.EqualFold(strings.TrimSuffix(a, "."), host) {
			return true
		}
	}
	return false
}

// authorized checks the request's credentials in constant time.
func (h HTTPAuth) authorized(r *http.Request) bool {
	if !h.Enabled() {
		return true
	}
	ok := false
	if h.Token != "" {
		if tok, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); found {
			ok = equalSecret(tok, h.Token)
		}
	}
	if h.User != "" && h.Password != "" {
		if u, p, found := r.BasicAuth(); found {
			uOK := equalSecret(u, h.User)
			pOK := equalSecret(p, h.Password)
			ok = ok || (uOK && pOK)
		}
	}
	return ok
}

// equalSecret compares a and b in time independent of where they differ
// and of their lengths (both are hashed first).
func equalSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// guard wraps next with the Host check (every path) and the credential
// check (every path but /healthz and /readyz, which carry no data, for
// load-balancer probes).
func (h HTTPAuth) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.allowedHost(r.Host) {
			http.Error(w, "misdirected request: Host "+strconvQuote(r.Host)+" is not a name of this admin listener (add it to admin_hosts)", http.StatusMisdirectedRequest)
			return
		}
		if r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && !h.authorized(r) {
			if h.Token != "" {
				w.Header().Add("WWW-Authenticate", `Bearer realm="pgaudit"`)
			}
			if h.User != "" {
				w.Header().Add("WWW-Authenticate", `Basic realm="pgaudit", charset="UTF-8"`)
			}
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func strconvQuote(s string) string {
	if len(s) > 100 {
		s = s[:100]
	}
	return fmt.Sprintf("%q", s)
}

// cmdline serves /debug/pprof/cmdline with passwords redacted.
func cmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, strings.Join(RedactArgs(os.Args), "\x00"))
}

var (
	// The password of a URL: scheme://user:PASSWORD@host. Greedy up to
	// the last "@", as a password may contain one.
	urlPassword = regexp.MustCompile(`(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^\s]*@`)
	// key=value DSN password, quoted or not.
	kvPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)`)
	// --some-password=VALUE or --token=VALUE style flags.
	flagSecret = regexp.MustCompile(`(?i)^(--?[a-z0-9-]*(?:password|token|secret)[a-z0-9-]*=)(.+)$`)
)

// RedactArgs returns args with secrets replaced by "xxxxx": the password
// of URLs ("postgres://user:pw@host"), "password=..." in key=value DSNs,
// and the value of flags whose name says password, token or secret (both
// "--flag=value" and "--flag value").
func RedactArgs(args []string) []string {
	out := make([]string, len(args))
	redactNext := false
	for i, a := range args {
		if redactNext {
			out[i], redactNext = "xxxxx", false
			continue
		}
		out[i] = RedactDSN(a)
		if m := flagSecret.FindStringSubmatch(a); m != nil {
			out[i] = m[1] + "xxxxx"
		} else if strings.HasPrefix(a, "-") && !strings.Contains(a, "=") {
			l := strings.ToLower(a)
			if strings.Contains(l, "password") || strings.Contains(l, "token") || strings.Contains(l, "secret") {
				redactNext = true
			}
		}
	}
	return out
}

// RedactDSN replaces the password in a connection string (URL or
// key=value) with "xxxxx"; other text is returned as is.
func RedactDSN(s string) string {
	s = urlPassword.ReplaceAllString(s, "${1}xxxxx@")
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}
