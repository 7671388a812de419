// Package analyzer turns statements into query shapes, statistics and facts
// for the rules. Its input is Event, the contract between the live proxy
// (pooler), the log readers (querylog) and the rules: a rule never knows
// where its events came from.
package analyzer

import "github.com/pgaudit-proxy/pgaudit/internal/event"

// The contract between event sources and the analysis lives in the leaf
// package internal/event, so that the relay (pooler) does not link the
// analyzer's cgo (pg_query). These aliases keep the analyzer's own code and
// its callers reading naturally.
type (
	// EventKind is event.Kind.
	EventKind = event.Kind
	// Protocol is event.Protocol.
	Protocol = event.Protocol
	// Event is event.Event.
	Event = event.Event
	// Sink is event.Sink.
	Sink = event.Sink
	// DiscardSink is event.DiscardSink.
	DiscardSink = event.DiscardSink
	// Fingerprint is event.Fingerprint.
	Fingerprint = event.Fingerprint
)

// Event kinds and protocols; see internal/event.
const (
	KindStatement    = event.KindStatement
	KindSessionState = event.KindSessionState
	KindSessionEnd   = event.KindSessionEnd
	ProtocolSimple   = event.ProtocolSimple
	ProtocolExtended = event.ProtocolExtended
	ProtocolLog      = event.ProtocolLog
)

// ParseFingerprint is event.ParseFingerprint.
func ParseFingerprint(s string) (Fingerprint, error) { return event.ParseFingerprint(s) }
