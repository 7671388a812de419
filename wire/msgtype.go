package wire

// Message types: the first byte of every protocol message after startup
// (PostgreSQL's "Message Formats"). A letter can mean different messages in
// the two directions ('C' is Close from a client, CommandComplete from a
// server; 'D', 'E', 'H' and 'S' likewise), so each constant is named after
// its message, and a byte is only ever compared with the constants of the
// direction it was read from. CopyData and CopyDone are the same in both
// directions.

// Frontend message types: what a client sends.
const (
	MsgBind         byte = 'B'
	MsgClose        byte = 'C' // Close a statement or portal (target 'S' or 'P')
	MsgCopyFail     byte = 'f'
	MsgDescribe     byte = 'D' // Describe a statement or portal (target 'S' or 'P')
	MsgExecute      byte = 'E'
	MsgFlush        byte = 'H'
	MsgFunctionCall byte = 'F'
	MsgParse        byte = 'P'
	// MsgPassword is PasswordMessage, SASLInitialResponse, SASLResponse and
	// GSSResponse: which one follows from the authentication exchange.
	MsgPassword  byte = 'p'
	MsgQuery     byte = 'Q'
	MsgSync      byte = 'S'
	MsgTerminate byte = 'X'
)

// Message types sent in both directions (COPY FROM STDIN by the client,
// COPY TO STDOUT by the server).
const (
	MsgCopyData byte = 'd'
	MsgCopyDone byte = 'c'
)

// Backend message types: what a server sends.
const (
	MsgAuthentication           byte = 'R'
	MsgBackendKeyData           byte = 'K'
	MsgBindComplete             byte = '2'
	MsgCloseComplete            byte = '3'
	MsgCommandComplete          byte = 'C'
	MsgCopyBothResponse         byte = 'W'
	MsgCopyInResponse           byte = 'G'
	MsgCopyOutResponse          byte = 'H'
	MsgDataRow                  byte = 'D'
	MsgEmptyQueryResponse       byte = 'I'
	MsgErrorResponse            byte = 'E'
	MsgFunctionCallResponse     byte = 'V'
	MsgNegotiateProtocolVersion byte = 'v'
	MsgNoData                   byte = 'n'
	MsgNoticeResponse           byte = 'N'
	MsgNotificationResponse     byte = 'A'
	MsgParameterDescription     byte = 't'
	MsgParameterStatus          byte = 'S'
	MsgParseComplete            byte = '1'
	MsgPortalSuspended          byte = 's'
	MsgReadyForQuery            byte = 'Z'
	MsgRowDescription           byte = 'T'
)

// Transaction status bytes of ReadyForQuery.
const (
	TxIdle   byte = 'I' // not in a transaction block
	TxInTx   byte = 'T' // in a transaction block
	TxFailed byte = 'E' // in a failed transaction block
)

// Answers to SSLRequest and GSSENCRequest: a single byte, not a message.
const (
	EncryptionAccept byte = 'S' // go on with the TLS handshake (SSLRequest only)
	EncryptionRefuse byte = 'N' // go on unencrypted: the client sends its StartupMessage
)

// Targets of Describe and Close.
const (
	TargetStatement byte = 'S'
	TargetPortal    byte = 'P'
)

// AppendEmpty appends a message of type typ with an empty body (the
// five-byte header alone), such as ParseComplete or Sync.
func AppendEmpty(dst []byte, typ byte) []byte { return append(dst, typ, 0, 0, 0, 4) }

// EmptyMessage returns a new five-byte message of type typ with an empty
// body; the caller owns it. ParseComplete, BindComplete and the like below
// are EmptyMessage of their type.
func EmptyMessage(typ byte) []byte { return AppendEmpty(make([]byte, 0, 5), typ) }

// ParseComplete returns a new ParseComplete message ('1').
func ParseComplete() []byte { return EmptyMessage(MsgParseComplete) }

// BindComplete returns a new BindComplete message ('2').
func BindComplete() []byte { return EmptyMessage(MsgBindComplete) }

// CloseComplete returns a new CloseComplete message ('3').
func CloseComplete() []byte { return EmptyMessage(MsgCloseComplete) }

// NoData returns a new NoData message ('n').
func NoData() []byte { return EmptyMessage(MsgNoData) }

// Sync returns a new Sync message ('S', frontend).
func Sync() []byte { return EmptyMessage(MsgSync) }

// Flush returns a new Flush message ('H', frontend).
func Flush() []byte { return EmptyMessage(MsgFlush) }

// Terminate returns a new Terminate message ('X', frontend).
func Terminate() []byte { return EmptyMessage(MsgTerminate) }
