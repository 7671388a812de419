package auditlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

// logWriter is the audit log's output: a file with size-based rotation and
// reopen (for logrotate), standard output, or a caller's io.Writer. Each
// Write is one complete line and is never split across files. Safe for
// concurrent use.
type logWriter struct {
	mu      sync.Mutex
	path    string // "" when not a file
	f       *os.File
	out     io.Writer
	bw      *bufio.Writer // nil when unbuffered
	size    int64
	maxSize int64
	keep    int
	closed  bool

	errs     atomic.Uint64
	onError  func(err error, count uint64)
	bufBytes int
}

const auditFileMode = 0o600

func openLogWriter(path string, w io.Writer, maxSize int64, keep int, bufBytes int, onError func(error, uint64)) (*logWriter, error) {
	lw := &logWriter{maxSize: maxSize, keep: keep, onError: onError, bufBytes: bufBytes}
	switch {
	case w != nil:
		lw.out = w
		lw.maxSize = 0
	case path == "-":
		lw.out = os.Stdout
		lw.maxSize = 0
	case path == "":
		return nil, errors.New("open audit log: no path (use \"-\" for standard output)")
	default:
		lw.path = path
		if err := lw.openLocked(); err != nil {
			return nil, err
		}
	}
	if bufBytes > 0 {
		lw.bw = bufio.NewWriterSize(lw.out, bufBytes)
	}
	return lw, nil
}

func (w *logWriter) openLocked() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, auditFileMode)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open audit log: %w", err)
	}
	size := st.Size()
	if size > 0 {
		// A crash (kill -9, power loss) may have left a partial last
		// line: end it, so the first new record is not glued to it and
		// every record after it stays valid (readers count the fragment
		// as one malformed line).
		var last [1]byte
		if r, err := os.Open(w.path); err == nil {
			_, rerr := r.ReadAt(last[:], size-1)
			r.Close()
			if rerr == nil && last[0] != '\n' {
				if _, err := f.Write([]byte{'\n'}); err != nil {
					f.Close()
					return fmt.Errorf("open audit log: terminate partial last line: %w", err)
				}
				size++
			}
		}
	}
	w.f = f
	w.out = f
	w.size = size
	if w.bw != nil {
		w.bw.Reset(f)
	}
	return nil
}

func (w *logWriter) fail(err error) {
	n := w.errs.Add(1)
	if w.onError != nil {
		w.onError(err, n)
	}
}

// Write writes one line. Errors are counted and reported through onError
// rather than returned, so zerolog does not print each one to stderr.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.fail(errors.New("write audit log: closed"))
		return len(p), nil
	}
	if w.maxSize > 0 && w.f != nil && w.size > 0 && w.size+int64(len(p)) > w.maxSize {
		if err := w.rotateLocked(); err != nil {
			w.fail(err)
			if w.f == nil {
				return len(p), nil
			}
		}
	}
	var err error
	if w.bw != nil {
		_, err = w.bw.Write(p)
	} else {
		_, err = w.out.Write(p)
	}
	if err != nil {
		w.fail(fmt.Errorf("write audit log: %w", err))
	}
	w.size += int64(len(p))
	return len(p), nil
}

func (w *logWriter) flushLocked() error {
	if w.bw == nil {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		// bufio keeps a failed flush's error forever; start afresh.
		w.bw.Reset(w.out)
		return fmt.Errorf("flush audit log: %w", err)
	}
	return nil
}

// Flush writes buffered lines out.
func (w *logWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	return w.flushLocked()
}

// rotateLocked renames path to path.1 (shifting path.1..path.keep-1 up,
// dropping the oldest) and opens a new path. Whatever fails, it tries to
// leave a file open so that logging goes on.
func (w *logWriter) rotateLocked() error {
	ferr := w.flushLocked()
	cerr := wrapErr("close", w.f.Close())
	w.f = nil
	var rerr error
	if w.keep > 0 {
		for i := w.keep - 1; i >= 1 && rerr == nil; i-- {
			rerr = renameIfExists(w.path+"."+strconv.Itoa(i), w.path+"."+strconv.Itoa(i+1))
		}
		if rerr == nil {
			rerr = renameIfExists(w.path, w.path+".1")
		}
	} else if err := os.Remove(w.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		rerr = err
	}
	oerr := w.openLocked()
	if err := errors.Join(ferr, cerr, rerr, oerr); err != nil {
		return fmt.Errorf("rotate audit log: %w", err)
	}
	return nil
}

func renameIfExists(from, to string) error {
	if err := os.Rename(from, to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func wrapErr(ctx string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", ctx, err)
}

// Reopen flushes, closes and reopens the file at path (after logrotate
// moved it). A no-op for standard output and caller writers.
func (w *logWriter) Reopen() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.path == "" {
		return nil
	}
	ferr := w.flushLocked()
	var cerr error
	if w.f != nil {
		cerr = w.f.Close()
		w.f = nil
	}
	if err := w.openLocked(); err != nil {
		return fmt.Errorf("reopen audit log: %w", err)
	}
	return errors.Join(ferr, wrapErr("reopen audit log: close", cerr))
}

// Close flushes and closes the file. Later writes are counted as errors.
func (w *logWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.flushLocked()
	if w.f != nil {
		err = errors.Join(err, wrapErr("close audit log", w.f.Close()))
		w.f = nil
	}
	return err
}
