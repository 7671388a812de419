// Package pgtest starts and stops throwaway PostgreSQL clusters for tests,
// benchmarks and the demo: initdb and pg_ctl from the machine's PostgreSQL
// binaries, in a temporary directory, on a free loopback port. Started as
// root, the server runs as the "postgres" user, since Postgres refuses root.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries means no PostgreSQL server binaries were found.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries found (looked for initdb on PATH and in /usr/lib/postgresql/*/bin); install them with: apt-get install -y postgresql")

// Options configure a cluster. The zero value is a usable default.
type Options struct {
	// Conf lines are appended to postgresql.conf (for example
	// "log_min_duration_statement = 0").
	Conf []string
	// HBA, when set, replaces pg_hba.conf. The default trusts everything on
	// loopback and the socket.
	HBA string
	// Log, when set, receives the server's stderr file path in Cluster.LogFile.
	Quiet bool
}

// Cluster is a throwaway PostgreSQL server: running, from Start, or started
// at first use, from Lazy. Restart, StopServer, StartServer and Stop are for
// one goroutine at a time; the other methods may be called concurrently.
type Cluster struct {
	BinDir  string
	Dir     string // data directory parent: data/, socket, log
	DataDir string
	Port    int
	LogFile string
	Version int // server major version

	cred *syscall.Credential
	lazy *lazyStart // nil for a cluster from Start
}

// lazyStart is how a cluster from Lazy starts: once, at first use.
type lazyStart struct {
	opts Options
	hold net.Listener // keeps Port free until the server takes it
	once sync.Once
	err  error
}

// FindBinDir returns the directory holding initdb, pg_ctl and postgres: the
// one on PATH, else the newest /usr/lib/postgresql/*/bin.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start initializes and starts a new cluster. The caller must Stop it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{BinDir: bin}
	if err := c.start(ctx, opts); err != nil {
		return nil, err
	}
	return c, nil
}

// Lazy returns a cluster that is initialized and started by the first call
// of Ready, Host, DSN, Psql, Restart, StopServer or StartServer, so that
// tests which never talk to Postgres never start it. Port and BinDir are
// set at once (the port is held open until the server takes it); the other
// fields once it has started. When the start fails, Ready returns the
// error and the other methods panic with it. The caller must Stop the
// cluster, which does nothing to one that never started.
func Lazy(opts Options) *Cluster {
	c := &Cluster{lazy: &lazyStart{opts: opts}}
	c.BinDir, _ = FindBinDir() // no binaries: reported by Ready
	c.Version = versionOf(c.BinDir)
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		c.lazy.hold = l
		c.Port = l.Addr().(*net.TCPAddr).Port
	}
	return c
}

// Ready starts a cluster from Lazy unless it has started already, and
// returns why it could not start. It is nil for a cluster from Start.
func (c *Cluster) Ready() error {
	if c.lazy == nil {
		return nil
	}
	c.lazy.once.Do(func() {
		if c.BinDir == "" {
			c.lazy.err = ErrNoBinaries
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			c.lazy.err = c.start(ctx, c.lazy.opts)
			cancel()
		}
		if c.lazy.err != nil {
			c.lazy.err = fmt.Errorf("pgtest: start the cluster at first use: %w", c.lazy.err)
		}
	})
	return c.lazy.err
}

// ready is Ready for methods with no error to return.
func (c *Cluster) ready() {
	if err := c.Ready(); err != nil {
		panic(err)
	}
}

// start initializes and starts the server in a new temporary directory.
func (c *Cluster) start(ctx context.Context, opts Options) error {
	dir, err := os.MkdirTemp("", "pgaudit-pg-")
	if err != nil {
		return fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c.Dir, c.DataDir, c.LogFile = dir, filepath.Join(dir, "data"), filepath.Join(dir, "postgres.log")
	if err := c.init(ctx, opts); err != nil {
		os.RemoveAll(dir)
		c.Dir = ""
		return err
	}
	if err := c.startServer(ctx); err != nil {
		c.stop()
		c.Dir = ""
		return err
	}
	return nil
}

func (c *Cluster) init(ctx context.Context, opts Options) error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("pgtest: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(c.Dir, uid, gid); err != nil {
			return fmt.Errorf("pgtest: chown %s: %w", c.Dir, err)
		}
	}
	if err := os.Chmod(c.Dir, 0o700); err != nil {
		return err
	}
	if out, err := c.run(ctx, "initdb", "-D", c.DataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	port := c.Port
	if c.lazy != nil && c.lazy.hold != nil {
		_ = c.lazy.hold.Close() // the server takes the port now
		c.lazy.hold = nil
	}
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return err
		}
	}
	c.Port = port
	c.Version = versionOf(c.BinDir)
	if c.Version == 0 {
		if b, err := os.ReadFile(filepath.Join(c.DataDir, "PG_VERSION")); err == nil {
			c.Version, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", port),
		fmt.Sprintf("unix_socket_directories = '%s'", c.Dir),
		"max_connections = 300",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"shared_buffers = 128MB",
		"log_destination = 'stderr'",
	}
	conf = append(conf, opts.Conf...)
	if err := appendFile(filepath.Join(c.DataDir, "postgresql.conf"), strings.Join(conf, "\n")+"\n"); err != nil {
		return err
	}
	if opts.HBA != "" {
		if err := os.WriteFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(opts.HBA), 0o600); err != nil {
			return err
		}
		if c.cred != nil {
			_ = os.Chown(filepath.Join(c.DataDir, "pg_hba.conf"), int(c.cred.Uid), int(c.cred.Gid))
		}
	}
	return nil
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer f.Close()
	_, err = f.WriteString(text)
	return err
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

func (c *Cluster) startServer(ctx context.Context) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "60", "start")
	if err != nil {
		logTail, _ := os.ReadFile(c.LogFile)
		return fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, logTail)
	}
	return nil
}

// Stop shuts the server down at once and removes its directory. A cluster
// from Lazy that never started stays unstarted: later use panics.
func (c *Cluster) Stop() {
	if c.lazy != nil {
		c.lazy.once.Do(func() { c.lazy.err = errors.New("pgtest: cluster used after Stop") })
		if c.lazy.hold != nil {
			_ = c.lazy.hold.Close()
			c.lazy.hold = nil
		}
		if c.Dir == "" {
			return
		}
	}
	c.stop()
}

func (c *Cluster) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop")
	os.RemoveAll(c.Dir)
}

// Restart stops the server (fast mode: sessions are terminated) and starts it
// again on the same port. pause is how long it stays down.
func (c *Cluster) Restart(ctx context.Context, pause time.Duration) error {
	if err := c.Ready(); err != nil {
		return err
	}
	if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out)
	}
	time.Sleep(pause)
	return c.startServer(ctx)
}

// StopServer stops the server without removing anything; StartServer brings
// it back.
func (c *Cluster) StopServer(ctx context.Context) error {
	if err := c.Ready(); err != nil {
		return err
	}
	if out, err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "stop"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out)
	}
	return nil
}

// StartServer starts a server stopped by StopServer.
func (c *Cluster) StartServer(ctx context.Context) error {
	if err := c.Ready(); err != nil {
		return err
	}
	return c.startServer(ctx)
}

// Host returns the loopback address.
func (c *Cluster) Host() string {
	c.ready()
	return "127.0.0.1"
}

// DSN returns a URL for user postgres on database db ("postgres" when empty).
func (c *Cluster) DSN(db string) string {
	c.ready()
	if db == "" {
		db = "postgres"
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// Psql runs psql against db with the given arguments and returns its
// combined output.
func (c *Cluster) Psql(ctx context.Context, db string, args ...string) ([]byte, error) {
	if err := c.Ready(); err != nil {
		return nil, err
	}
	all := append([]string{"-X", "-v", "ON_ERROR_STOP=1", "-d", c.DSN(db)}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "psql"), all...)
	return cmd.CombinedOutput()
}

// Bin returns the path of a PostgreSQL program (psql, pgbench, ...) from the
// cluster's binary directory, falling back to PATH.
func (c *Cluster) Bin(name string) string {
	p := filepath.Join(c.BinDir, name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return name
}
