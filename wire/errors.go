package wire

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes the proxy itself sends, by their names in
// github.com/jackc/pgerrcode (Postgres's errcodes.txt); other code may use
// pgerrcode directly.
const (
	CodeProtocolViolation        = pgerrcode.ProtocolViolation
	CodeConnectionFailure        = pgerrcode.ConnectionFailure
	CodeClientUnableToConnect    = pgerrcode.SQLClientUnableToEstablishSQLConnection
	CodeInvalidPassword          = pgerrcode.InvalidPassword
	CodeInvalidAuthorization     = pgerrcode.InvalidAuthorizationSpecification
	CodeInsufficientPrivilege    = pgerrcode.InsufficientPrivilege
	CodeInvalidCatalogName       = pgerrcode.InvalidCatalogName
	CodeTooManyConnections       = pgerrcode.TooManyConnections
	CodeOutOfMemory              = pgerrcode.OutOfMemory
	CodeAdminShutdown            = pgerrcode.AdminShutdown
	CodeQueryCanceled            = pgerrcode.QueryCanceled
	CodeFeatureNotSupported      = pgerrcode.FeatureNotSupported
	CodeIdleInTransactionTimeout = pgerrcode.IdleInTransactionSessionTimeout
	CodeIdleSessionTimeout       = pgerrcode.IdleSessionTimeout
	CodeInternalError            = pgerrcode.InternalError
	CodeConnectionException      = pgerrcode.ConnectionException
	CodeInvalidParameterValue    = pgerrcode.InvalidParameterValue
	CodeObjectNotInPrerequisite  = pgerrcode.ObjectNotInPrerequisiteState
	CodeCannotConnectNow         = pgerrcode.CannotConnectNow
)

// Error is an error with a SQLSTATE that is sent to a client as an
// ErrorResponse. Severity is "ERROR" or "FATAL" (FATAL ends the session).
type Error struct {
	Severity string
	Code     string
	Message  string
	Detail   string
	Hint     string
	// Cause is the underlying error, for logs; it is never sent.
	Cause error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Severity + " " + e.Code + ": " + e.Message + ": " + e.Cause.Error()
	}
	return e.Severity + " " + e.Code + ": " + e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Fatal returns a FATAL Error.
func Fatal(code, msg string) *Error { return &Error{Severity: "FATAL", Code: code, Message: msg} }

// Errorf returns an ERROR-severity Error.
func Errorf(code, msg string) *Error { return &Error{Severity: "ERROR", Code: code, Message: msg} }

// AppendErrorResponse appends e as an ErrorResponse message.
func (e *Error) AppendErrorResponse(dst []byte) []byte {
	msg := pgproto3.ErrorResponse{
		Severity:            e.Severity,
		SeverityUnlocalized: e.Severity,
		Code:                e.Code,
		Message:             e.Message,
		Detail:              e.Detail,
		Hint:                e.Hint,
	}
	out, err := msg.Encode(dst)
	if err != nil {
		return dst
	}
	return out
}

// FromUpstream converts an error from connecting to or talking with the
// server into an Error for the client. A *pgconn.PgError keeps the server's
// code and text; anything else becomes 08006 with the cause in the detail.
func FromUpstream(err error, severity string) *Error {
	var we *Error
	if errors.As(err, &we) {
		return we
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &Error{Severity: severity, Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint, Cause: err}
	}
	return &Error{Severity: severity, Code: CodeConnectionFailure, Message: "server connection failed", Detail: err.Error(), Cause: err}
}
