package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ServerConn is an authenticated connection to a Postgres server, taken over
// from pgconn after startup so that the proxy relays raw frames. TLS, SCRAM
// and md5 towards the server come from pgconn.
//
// A ServerConn is owned by one goroutine at a time (the pool hands it out);
// its fields other than Conn are not synchronized.
type ServerConn struct {
	*Conn
	// PID and Key are the server's BackendKeyData, used to cancel.
	PID uint32
	Key []byte
	// Params holds the ParameterStatus values the server reported; the
	// owner updates it as ParameterStatus messages pass.
	Params map[string]string
	// TxStatus is the status of the last ReadyForQuery ('I', 'T' or 'E').
	TxStatus byte
	// Created is when the connection was established.
	Created time.Time

	cancelNetwork, cancelAddr string
}

// ConnectServer opens a server connection with cfg. The returned connection
// is idle (ReadyForQuery 'I' consumed).
func ConnectServer(ctx context.Context, cfg *pgconn.Config, maxBody int) (*ServerConn, error) {
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// pgconn starts a background reader when a write during login takes
	// more than 15 ms (a loaded machine is enough) and only asks it to
	// stop: its goroutine can still be blocked in a Read of the socket
	// after login. Hijacked like that, the connection's next reply would
	// go to that goroutine, and the proxy would wait for it forever (seen
	// as a first statement on a new server connection that never got an
	// answer). SyncConn waits for the reader to stop, pinging the server
	// if needed, as pgconn documents for Hijack.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("sync server connection before taking it over: %w", err)
	}
	hj, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("hijack server connection: %w", err)
	}
	if hj.Frontend.ReadBufferLen() != 0 {
		hj.Conn.Close()
		return nil, errors.New("server sent unexpected data after ReadyForQuery")
	}
	nc := hj.Conn
	if lc, ok := nc.(*loggedInConn); ok {
		// Logged in with a ServerLogin's keys: relay on the real
		// connection, without the wrapper.
		if nc, err = lc.unwrap(); err != nil {
			hj.Conn.Close()
			return nil, err
		}
	}
	sc := &ServerConn{
		Conn:     NewConn(nc, maxBody),
		PID:      hj.PID,
		Key:      hj.SecretKey,
		Params:   hj.ParameterStatuses,
		TxStatus: hj.TxStatus,
		Created:  time.Now(),
	}
	if ra := nc.RemoteAddr(); ra != nil {
		sc.cancelNetwork, sc.cancelAddr = ra.Network(), ra.String()
	}
	if sc.cancelNetwork == "" || sc.cancelAddr == "" || sc.cancelAddr == "@" {
		if len(cfg.Host) > 0 && cfg.Host[0] == '/' {
			sc.cancelNetwork, sc.cancelAddr = "unix", fmt.Sprintf("%s/.s.PGSQL.%d", cfg.Host, cfg.Port)
		} else {
			sc.cancelNetwork, sc.cancelAddr = "tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
		}
	}
	return sc, nil
}

// Cancel sends a CancelRequest for this connection on a new connection to
// the same server. It does not wait for the cancel to take effect.
func (s *ServerConn) Cancel(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, s.cancelNetwork, s.cancelAddr)
	if err != nil {
		return fmt.Errorf("cancel: dial %s: %w", s.cancelAddr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(AppendCancelRequest(nil, s.PID, s.Key)); err != nil {
		return fmt.Errorf("cancel: write: %w", err)
	}
	// The server closes the connection once it has read the request.
	var b [1]byte
	_, _ = c.Read(b[:])
	return nil
}

// ExecResult is what Exec read back.
type ExecResult struct {
	// Rows holds text-format data rows of all statements, NULL as "".
	Rows [][]string
	// Tags are the command tags in order.
	Tags []string
	// Err is the first ErrorResponse, if any.
	Err *pgconn.PgError
	// Notices counts NoticeResponse messages (they are dropped).
	Notices int
}

// Exec runs sql with the simple protocol and reads until ReadyForQuery. It
// is for the proxy's own statements (reset, SET, health checks) on an idle
// connection that no client is using. A non-nil error means the connection
// is unusable and must be closed; SQL errors are in ExecResult.Err.
func (s *ServerConn) Exec(ctx context.Context, sql string) (*ExecResult, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
		defer s.SetDeadline(time.Time{})
	}
	q := pgproto3.Query{String: sql}
	buf, err := q.Encode(nil)
	if err != nil {
		return nil, err
	}
	if err := s.WriteRaw(buf); err != nil {
		return nil, err
	}
	if err := s.Flush(); err != nil {
		return nil, fmt.Errorf("exec: write: %w", err)
	}
	res := &ExecResult{}
	for {
		typ, raw, err := s.R.ReadMessage()
		if err != nil {
			return nil, fmt.Errorf("exec: read: %w", err)
		}
		body := raw[5:]
		switch typ {
		case MsgDataRow:
			res.Rows = append(res.Rows, decodeDataRow(body))
		case MsgCommandComplete:
			res.Tags = append(res.Tags, cstring(body))
		case MsgErrorResponse:
			if res.Err == nil {
				var er pgproto3.ErrorResponse
				if err := er.Decode(body); err == nil {
					res.Err = pgconn.ErrorResponseToPgError(&er)
				}
			}
		case MsgNoticeResponse:
			res.Notices++
		case MsgParameterStatus:
			name, value := DecodeParameterStatus(body)
			if name != "" {
				s.Params[name] = value
			}
		case MsgReadyForQuery:
			if len(body) == 1 {
				s.TxStatus = body[0]
			}
			return res, nil
		case MsgCopyInResponse, MsgCopyOutResponse, MsgCopyBothResponse:
			return nil, errors.New("exec: unexpected COPY from internal statement")
		}
	}
}

func decodeDataRow(body []byte) []string {
	if len(body) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	row := make([]string, 0, n)
	for i := 0; i < n && len(body) >= 4; i++ {
		l := int(int32(binary.BigEndian.Uint32(body)))
		body = body[4:]
		if l < 0 {
			row = append(row, "")
			continue
		}
		if l > len(body) {
			break
		}
		row = append(row, string(body[:l]))
		body = body[l:]
	}
	return row
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// DecodeParameterStatus returns the name and value of a ParameterStatus
// body, or empty strings when it is malformed.
func DecodeParameterStatus(body []byte) (name, value string) {
	for i, c := range body {
		if c == 0 {
			name = string(body[:i])
			value = cstring(body[i+1:])
			return name, value
		}
	}
	return "", ""
}

// AppendParameterStatus appends a ParameterStatus message.
func AppendParameterStatus(dst []byte, name, value string) []byte {
	dst = AppendHeader(dst, MsgParameterStatus, len(name)+len(value)+2)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, value...)
	return append(dst, 0)
}

// AppendReadyForQuery appends a ReadyForQuery message with status tx.
func AppendReadyForQuery(dst []byte, tx byte) []byte {
	return append(AppendHeader(dst, MsgReadyForQuery, 1), tx)
}

// AppendBackendKeyData appends BackendKeyData.
func AppendBackendKeyData(dst []byte, pid uint32, key []byte) []byte {
	dst = AppendHeader(dst, MsgBackendKeyData, 4+len(key))
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, key...)
}

// AppendAuthOK appends AuthenticationOk.
func AppendAuthOK(dst []byte) []byte {
	return append(AppendHeader(dst, MsgAuthentication, 4), 0, 0, 0, 0)
}
