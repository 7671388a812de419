package pooler

import (
	"bytes"
	"context"
	"encoding/binary"
	"strconv"
	"strings"
	"time"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Statements prepared before a schema change (issue 13 item 3).
//
// On a direct connection a statement's result shape is fixed when it is
// parsed: after its table or a type it returns changed, Bind and Describe
// fail with 0A000 "cached plan must not change result type" until the
// client prepares it again. In transaction mode a client's statement runs
// on whichever server connection is free, and where that connection never
// had it the proxy prepares it there anew, in the new shape, without that
// error; a client that cached the old row description (pgx
// QueryExecModeCacheStatement) would then decode the rows against stale
// column types. So each client statement remembers the shape it was told
// (its Describe replies), each server connection the shapes it learned for
// its statements, and where the two may differ the proxy asks the server
// first (the shape probe): before the client's Bind or Describe it sends
// Describe of the server statement and Flush, and waits for the answer
// before it sends what the client asked for. When the shapes differ the
// client gets the 0A000 Postgres gives, from a Bind the server rejects, so
// that the rest of the group is skipped and an open transaction aborted,
// as on a direct connection; nothing of the client's runs.
//
// The probe costs one round trip, only the first time a described
// statement runs on a server connection (or after the server dropped it
// from its cache), and only when nothing else of the client's is in flight
// (a statement later in a pipeline is not checked).

// shapeMismatchName names no statement: a Bind of it fails with 26000,
// which the proxy turns into 0A000 (see pendGate).
const shapeMismatchName = "pgaudit_shape_changed"

// shapeProbe is a shape probe in flight; done is closed when its answer
// came (ok, key) or it ended without one (an error, the server lost).
type shapeProbe struct {
	done   chan struct{}
	params string
	key    string
	ok     bool
	ended  bool
}

// rowShape returns the result shape a RowDescription ('T') or NoData
// ('n') body describes: the column type OIDs as an oid[] literal, "-"
// for no rows, "" if malformed.
func rowShape(typ byte, body []byte) string {
	return string(appendRowShape(nil, typ, body))
}

// appendRowShape appends rowShape(typ, body) to dst, or returns dst
// unchanged when the body is malformed, so that the relay can compare a
// reply's shape with the one it knows without allocating.
func appendRowShape(dst []byte, typ byte, body []byte) []byte {
	if typ == wire.MsgNoData {
		return append(dst, '-')
	}
	if len(body) < 2 {
		return dst
	}
	n := int(binary.BigEndian.Uint16(body))
	b := body[2:]
	start := len(dst)
	dst = append(dst, '{')
	for i := 0; i < n; i++ {
		z := indexZero(b)
		if z < 0 || len(b) < z+1+18 {
			return dst[:start]
		}
		b = b[z+1:]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendUint(dst, uint64(binary.BigEndian.Uint32(b[6:10])), 10)
		b = b[18:]
	}
	return append(dst, '}')
}

// paramShape returns the parameter types of a ParameterDescription body
// as an oid[] literal ("" if malformed).
func paramShape(body []byte) string {
	if len(body) < 2 {
		return ""
	}
	n := int(binary.BigEndian.Uint16(body))
	if len(body) != 2+4*n {
		return ""
	}
	var sb strings.Builder
	sb.WriteByte('{')
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.FormatUint(uint64(binary.BigEndian.Uint32(body[2+4*i:])), 10))
	}
	sb.WriteByte('}')
	return sb.String()
}

// shapeKey is what a server statement must have for def: its result and
// parameter shapes as the client was told them.
func (def *stmtDef) shapeKey() string { return def.key }

// noteRowDescription records the result shape of a RowDescription or
// NoData (typ, body) a Describe of def got, and reports whether body was
// well-formed (def's shape is then that one). A RowDescription the same
// as the last one def got (rowDesc) has the same shape: the usual case,
// per Describe of a statement run again, costs a comparison of bytes, not
// a rendering of the shape. s.mu held.
func (def *stmtDef) noteRowDescription(typ byte, body []byte) bool {
	if typ == wire.MsgRowDescription && len(def.rowDesc) > 0 && bytes.Equal(body, def.rowDesc) {
		return true
	}
	var buf [64]byte
	shape := appendRowShape(buf[:0], typ, body)
	if len(shape) == 0 {
		return false
	}
	if string(shape) != def.shape {
		// (Unchanged costs no allocation.)
		def.setShapes(string(shape), "")
	}
	if typ == wire.MsgRowDescription && len(body) <= maxKeptRowDescription {
		def.rowDesc = append(def.rowDesc[:0], body...)
	} else {
		def.rowDesc = def.rowDesc[:0]
	}
	return true
}

// maxKeptRowDescription bounds the RowDescription a statement keeps to
// recognize the next one (see noteRowDescription): wider results render
// their shape each time instead.
const maxKeptRowDescription = 1024

// setShapes records what the client was told of def ("" leaves a part as
// it is); s.mu held.
func (def *stmtDef) setShapes(shape, params string) {
	if shape != "" {
		def.shape = shape
	}
	if params != "" {
		def.paramShape = params
	}
	def.key = def.shape + "|" + def.paramShape
}

// shapeMatches says whether key (a server statement's shapes) is what the
// client was told for def; parameter types count only where it was told
// them.
func (def *stmtDef) shapeMatches(key string) bool {
	if def.paramShape == "" {
		r, _, _ := strings.Cut(key, "|")
		return r == def.shape
	}
	return key == def.shapeKey()
}

// needProbeLocked says whether def's shape must be checked on srv before
// a Bind or Describe of it; s.mu held.
func (s *Session) needProbeLocked(srv *Server, def *stmtDef) bool {
	return def.serverName != "" && def.shape != "" && srv.prepared != nil &&
		!def.shapeMatches(srv.prepared.shape(def.serverName)) &&
		s.queue.len() == 0 && !s.copyInExtended && !s.skipUntilSync
}

// gateShapeLocked runs before the client's Bind (describe false) or
// Describe of statement def is sent to srv: when def may have a different
// shape on srv, it probes it. done reports that the message was answered
// here instead: the probe's error was relayed (the server skips the rest of
// the group), or the shapes differ and the 0A000 Postgres would give was
// sent; s.mu is then released. With done false and err nil, s.mu is still
// held and the message goes on as usual; with err, s.mu is released.
func (s *Session) gateShapeLocked(ctx context.Context, srv *Server, def *stmtDef, describe bool) (done bool, err error) {
	if !s.needProbeLocked(srv, def) {
		return false, nil
	}
	verdict, err := s.probeLocked(ctx, srv, def)
	s.msgAt = time.Time{} // the probe waited for the server (see requestNow)
	switch {
	case err != nil:
		return true, err
	case verdict == probeFailed:
		s.mu.Unlock()
		return true, nil
	case verdict == probeMismatch:
		out := s.shapeMismatchLocked(def, describe)
		s.writing = true
		s.mu.Unlock()
		return true, s.writeServer(srv, out, s.client.R.Buffered() == 0)
	}
	return false, nil
}

// probe verdicts
const (
	probeMatch    = iota // the server statement has the client's shape
	probeMismatch        // it does not: answer 0A000
	probeFailed          // the server answered with an error (relayed)
)

// probeLocked prepares def on srv if needed and learns its shape there,
// waiting for the answer; s.mu held on entry and, unless err is non-nil,
// on return.
func (s *Session) probeLocked(ctx context.Context, srv *Server, def *stmtDef) (verdict int, err error) {
	out := s.ensurePreparedLocked(srv, def)
	out = wire.AppendTarget(out, wire.MsgDescribe, wire.TargetStatement, def.serverName)
	out = wire.AppendEmpty(out, wire.MsgFlush)
	pr := &shapeProbe{done: make(chan struct{})}
	s.probe = pr
	s.queue.push(pending{kind: pendDescribeStmt, swallow: true, probe: true, serverStmt: def.serverName})
	// The answer is read by the background reader while this goroutine
	// waits.
	s.startReaderLocked(srv)
	s.writing = true
	s.mu.Unlock()
	if err := s.writeServer(srv, out, true); err != nil {
		return 0, err
	}
	select {
	case <-pr.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	s.mu.Lock()
	if s.probe == pr {
		s.probe = nil
	}
	if s.server != srv || s.closed {
		s.mu.Unlock()
		return 0, errClientGone
	}
	switch {
	case !pr.ok:
		return probeFailed, nil
	case def.shapeMatches(pr.key):
		return probeMatch, nil
	}
	return probeMismatch, nil
}

// endProbeLocked wakes the goroutine waiting for the shape probe, with
// its answer if key is not ""; s.mu held.
func (s *Session) endProbeLocked(key string) {
	pr := s.probe
	if pr == nil || pr.ended {
		return
	}
	pr.ended = true
	pr.key, pr.ok = key, key != ""
	close(pr.done)
}

// shapeMismatchLocked returns what replaces the client's Bind or Describe
// of def after a probe found another shape: a Bind the server rejects,
// answered as 0A000; s.mu held. A Describe gets the parameter types first,
// as from Postgres.
func (s *Session) shapeMismatchLocked(def *stmtDef, describe bool) []byte {
	it := pending{kind: pendGate}
	if describe && def.toldTypes != nil {
		it.params = []string{string(wire.AppendHeader(nil, wire.MsgParameterDescription, len(def.toldTypes))) + string(def.toldTypes)}
	}
	s.queue.push(it)
	return wire.AppendBind(nil, nil, shapeMismatchName, []byte{0, 0, 0, 0, 0, 0})
}

// shapeMismatch is the error Postgres gives for a statement whose result
// shape changed since it was prepared.
func shapeMismatch() *wire.Error {
	return &wire.Error{Severity: "ERROR", Code: "0A000", Message: "cached plan must not change result type"}
}
