package admin

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

// startHTTP serves a fresh Admin with opts on addr and returns its base
// URL.
func startHTTP(t *testing.T, opts Options, addr string) string {
	t.Helper()
	a := New(opts)
	bound, err := a.ListenAndServe(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	_, port, _ := strings.Cut(bound.String(), "]:")
	if port == "" {
		_, port, _ = strings.Cut(bound.String(), ":")
	}
	return "http://127.0.0.1:" + port
}

// do sends a GET with the given Host and Authorization (empty: none).
func do(t *testing.T, url, host string, auth func(*http.Request)) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if auth != nil {
		auth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func bearer(tok string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

// TestHTTPAdminNeedsCredentialsOffLoopback: a non-loopback admin address
// without credentials is refused; with them it serves.
func TestHTTPAdminNeedsCredentialsOffLoopback(t *testing.T) {
	a := New(Options{})
	if addr, err := a.ListenAndServe("0.0.0.0:0"); err == nil {
		_ = a.Close()
		t.Fatalf("admin listener on %s without credentials was allowed", addr)
	} else if !strings.Contains(err.Error(), "admin_token") {
		t.Errorf("error %q does not say what to set", err)
	}
	base := startHTTP(t, Options{HTTPAuth: HTTPAuth{Token: "s3cret-token"}}, "0.0.0.0:0")
	if code, _ := do(t, base+"/api/v1/pools", "", bearer("s3cret-token")); code != 200 {
		t.Errorf("with the token: %d", code)
	}
}

// TestHTTPAdminAuth: with a token and basic credentials configured, every
// endpoint but /healthz and /readyz needs one of them.
func TestHTTPAdminAuth(t *testing.T) {
	base := startHTTP(t, Options{Pprof: true, HTTPAuth: HTTPAuth{Token: "s3cret-token", User: "ops", Password: "ops-pw"}}, "127.0.0.1:0")
	basic := func(u, p string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth(u, p) } }
	for _, path := range []string{"/", "/metrics", "/api/v1/pools", "/api/v1/clients", "/api/v1/queries", "/debug/pprof/cmdline"} {
		for name, auth := range map[string]func(*http.Request){
			"none":          nil,
			"wrong token":   bearer("s3cret-tokeN"),
			"token prefix":  bearer("s3cret"),
			"wrong basic":   basic("ops", "nope"),
			"wrong user":    basic("root", "ops-pw"),
			"token as user": basic("s3cret-token", "s3cret-token"),
		} {
			if code, _ := do(t, base+path, "", auth); code != http.StatusUnauthorized {
				t.Errorf("%s with %s: %d, want 401", path, name, code)
			}
		}
		for name, auth := range map[string]func(*http.Request){"token": bearer("s3cret-token"), "basic": basic("ops", "ops-pw")} {
			if code, body := do(t, base+path, "", auth); code != 200 {
				t.Errorf("%s with %s: %d %s", path, name, code, body)
			}
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := do(t, base+path, "", nil); code == http.StatusUnauthorized {
			t.Errorf("%s needs credentials; probes cannot send them", path)
		}
	}
}

// TestHTTPAdminHostCheck: DNS-rebinding protection. Only IP literals,
// localhost and the configured names are answered.
func TestHTTPAdminHostCheck(t *testing.T) {
	base := startHTTP(t, Options{HTTPAuth: HTTPAuth{Hosts: []string{"pgaudit.internal"}}}, "127.0.0.1:0")
	_, port, _ := strings.Cut(strings.TrimPrefix(base, "http://"), ":")
	for host, want := range map[string]int{
		"127.0.0.1:" + port:         200,
		"localhost:" + port:         200,
		"[::1]:" + port:             200,
		"pgaudit.internal:" + port:  200,
		"PGAUDIT.internal.":         200,
		"evil.example:" + port:      http.StatusMisdirectedRequest,
		"pgaudit.internal.evil.com": http.StatusMisdirectedRequest,
		"localhost.evil.example":    http.StatusMisdirectedRequest,
	} {
		for _, path := range []string{"/api/v1/pools", "/healthz"} {
			if code, _ := do(t, base+path, host, nil); code != want {
				t.Errorf("GET %s with Host %q: %d, want %d", path, host, code, want)
			}
		}
	}
}

// TestPprofCmdlineRedacted: the process arguments shown by pprof carry no
// password.
func TestPprofCmdlineRedacted(t *testing.T) {
	saved := os.Args
	defer func() { os.Args = saved }()
	os.Args = []string{"pgaudit", "proxy", "--upstream", "postgres://app:hunter2-url@db:5432/app?sslmode=require",
		"--dsn=host=db user=app password=hunter2-kv dbname=app", "--admin-password", "hunter2-flag", "--auth-token=hunter2-eq", "--pool-size", "20"}
	base := startHTTP(t, Options{Pprof: true}, "127.0.0.1:0")
	code, body := do(t, base+"/debug/pprof/cmdline", "", nil)
	if code != 200 {
		t.Fatalf("cmdline: %d %s", code, body)
	}
	if strings.Contains(body, "hunter2") {
		t.Errorf("/debug/pprof/cmdline shows a secret: %q", body)
	}
	for _, keep := range []string{"postgres://app:xxxxx@db:5432/app?sslmode=require", "user=app", "--pool-size\x0020"} {
		if !strings.Contains(body, keep) {
			t.Errorf("cmdline %q lost %q", body, keep)
		}
	}
}
