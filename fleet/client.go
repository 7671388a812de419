package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Auth is what a Client sends to instances whose admin HTTP listener
// needs credentials (admin_token, or admin_user and admin_password). The
// zero value sends none.
type Auth struct {
	Token          string
	User, Password string
}

// maxDocument bounds a fetched document (5000 shapes with a few hundred
// bins each stay far below it).
const maxDocument = 256 << 20

// ExportPath is where the admin HTTP listener serves the Document.
const ExportPath = "/api/v1/export"

// Client fetches exports from pgaudit instances. The zero value is usable
// (http.DefaultClient's transport, no credentials, 5 s per fetch).
type Client struct {
	// HTTP is the client used; nil means a client with Timeout.
	HTTP *http.Client
	// Auth is sent with every request.
	Auth Auth
	// Timeout bounds one fetch (connect, headers and body); default 5 s.
	Timeout time.Duration
}

// ExportURL returns the export URL of an instance given as its admin base
// URL ("http://host:9930") or as the export URL itself.
func ExportURL(base string) string {
	b := strings.TrimRight(base, "/")
	if strings.HasSuffix(b, ExportPath) {
		return b
	}
	return b + ExportPath
}

// Fetch gets and decodes one instance's export. base is the instance's
// admin URL (see ExportURL). Errors name the URL; credentials are never
// part of them.
func (c *Client) Fetch(ctx context.Context, base string) (*Document, error) {
	url := ExportURL(base)
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	req.Header.Set("Accept", "application/json")
	switch {
	case c.Auth.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.Auth.Token)
	case c.Auth.User != "":
		req.SetBasicAuth(c.Auth.User, c.Auth.Password)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // drop net/http's repetition of the URL
		}
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		hint := ""
		if resp.StatusCode == http.StatusUnauthorized {
			hint = " (set the admin token or password: see pgaudit report --help)"
		}
		return nil, fmt.Errorf("fetch %s: %s: %s%s", url, resp.Status, strings.TrimSpace(string(msg)), hint)
	}
	var d Document
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxDocument))
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("fetch %s: decode export: %w", url, err)
	}
	if err := d.Check(); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	return &d, nil
}

// FetchAll fetches every instance at once and returns one Source per URL,
// in the order given; each fetch is bounded by the client's Timeout. It
// returns when every fetch has ended.
func (c *Client) FetchAll(ctx context.Context, bases []string) []Source {
	out := make([]Source, len(bases))
	var wg sync.WaitGroup
	for i, b := range bases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				if r := recover(); r != nil {
					out[i] = Source{Name: b, Err: fmt.Errorf("fetch %s: panic: %v", b, r)}
				}
			}()
			d, err := c.Fetch(ctx, b)
			out[i] = Source{Name: b, Doc: d, Err: err}
		}()
	}
	wg.Wait()
	return out
}
