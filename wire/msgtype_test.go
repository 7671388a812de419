package wire

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestMessageTypes checks every named message type against the first byte
// pgproto3 (pgx's codec) writes for that message, and the fixed-message
// helpers against pgproto3's whole encoding.
func TestMessageTypes(t *testing.T) {
	enc := func(m interface{ Encode([]byte) ([]byte, error) }) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatalf("encode %T: %v", m, err)
		}
		return b
	}
	types := []struct {
		name string
		got  byte
		msg  interface{ Encode([]byte) ([]byte, error) }
	}{
		{"Bind", MsgBind, &pgproto3.Bind{}},
		{"Close", MsgClose, &pgproto3.Close{ObjectType: 'S'}},
		{"CopyFail", MsgCopyFail, &pgproto3.CopyFail{}},
		{"Describe", MsgDescribe, &pgproto3.Describe{ObjectType: 'S'}},
		{"Execute", MsgExecute, &pgproto3.Execute{}},
		{"Flush", MsgFlush, &pgproto3.Flush{}},
		{"FunctionCall", MsgFunctionCall, &pgproto3.FunctionCall{}},
		{"Parse", MsgParse, &pgproto3.Parse{}},
		{"Password", MsgPassword, &pgproto3.PasswordMessage{}},
		{"SASLResponse", MsgPassword, &pgproto3.SASLResponse{}},
		{"Query", MsgQuery, &pgproto3.Query{}},
		{"Sync", MsgSync, &pgproto3.Sync{}},
		{"Terminate", MsgTerminate, &pgproto3.Terminate{}},
		{"CopyData", MsgCopyData, &pgproto3.CopyData{}},
		{"CopyDone", MsgCopyDone, &pgproto3.CopyDone{}},
		{"Authentication", MsgAuthentication, &pgproto3.AuthenticationOk{}},
		{"BackendKeyData", MsgBackendKeyData, &pgproto3.BackendKeyData{}},
		{"BindComplete", MsgBindComplete, &pgproto3.BindComplete{}},
		{"CloseComplete", MsgCloseComplete, &pgproto3.CloseComplete{}},
		{"CommandComplete", MsgCommandComplete, &pgproto3.CommandComplete{}},
		{"CopyBothResponse", MsgCopyBothResponse, &pgproto3.CopyBothResponse{}},
		{"CopyInResponse", MsgCopyInResponse, &pgproto3.CopyInResponse{}},
		{"CopyOutResponse", MsgCopyOutResponse, &pgproto3.CopyOutResponse{}},
		{"DataRow", MsgDataRow, &pgproto3.DataRow{}},
		{"EmptyQueryResponse", MsgEmptyQueryResponse, &pgproto3.EmptyQueryResponse{}},
		{"ErrorResponse", MsgErrorResponse, &pgproto3.ErrorResponse{}},
		{"FunctionCallResponse", MsgFunctionCallResponse, &pgproto3.FunctionCallResponse{}},
		{"NegotiateProtocolVersion", MsgNegotiateProtocolVersion, &pgproto3.NegotiateProtocolVersion{}},
		{"NoData", MsgNoData, &pgproto3.NoData{}},
		{"NoticeResponse", MsgNoticeResponse, &pgproto3.NoticeResponse{}},
		{"NotificationResponse", MsgNotificationResponse, &pgproto3.NotificationResponse{}},
		{"ParameterDescription", MsgParameterDescription, &pgproto3.ParameterDescription{}},
		{"ParameterStatus", MsgParameterStatus, &pgproto3.ParameterStatus{}},
		{"ParseComplete", MsgParseComplete, &pgproto3.ParseComplete{}},
		{"PortalSuspended", MsgPortalSuspended, &pgproto3.PortalSuspended{}},
		{"ReadyForQuery", MsgReadyForQuery, &pgproto3.ReadyForQuery{TxStatus: TxIdle}},
		{"RowDescription", MsgRowDescription, &pgproto3.RowDescription{}},
	}
	for _, c := range types {
		if want := enc(c.msg)[0]; c.got != want {
			t.Errorf("Msg%s = %q, pgproto3 writes %q", c.name, c.got, want)
		}
	}

	fixed := []struct {
		name string
		got  []byte
		msg  interface{ Encode([]byte) ([]byte, error) }
	}{
		{"ParseComplete", ParseComplete(), &pgproto3.ParseComplete{}},
		{"BindComplete", BindComplete(), &pgproto3.BindComplete{}},
		{"CloseComplete", CloseComplete(), &pgproto3.CloseComplete{}},
		{"NoData", NoData(), &pgproto3.NoData{}},
		{"Sync", Sync(), &pgproto3.Sync{}},
		{"Flush", Flush(), &pgproto3.Flush{}},
		{"Terminate", Terminate(), &pgproto3.Terminate{}},
		{"AppendEmpty", AppendEmpty([]byte("x"), MsgCopyDone)[1:], &pgproto3.CopyDone{}},
	}
	for _, c := range fixed {
		if want := enc(c.msg); !bytes.Equal(c.got, want) {
			t.Errorf("%s() = %q, pgproto3 writes %q", c.name, c.got, want)
		}
	}
	a, b := ParseComplete(), ParseComplete()
	a[0] = 0
	if b[0] != MsgParseComplete {
		t.Error("fixed-message helpers share their backing array")
	}
}
