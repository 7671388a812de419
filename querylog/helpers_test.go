package querylog

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/pgaudit-proxy/pgaudit/internal/event"
)

// render prints events in a stable form: grouped by session (only the
// order within a session is defined), sessions numbered by first
// appearance, times reduced to whether they are set.
func render(evs []*event.Event) string {
	ids := map[uint64]int{}
	var per []*strings.Builder
	for _, ev := range evs {
		id, ok := ids[ev.SessionID]
		if !ok {
			id = len(ids) + 1
			ids[ev.SessionID] = id
			per = append(per, &strings.Builder{})
		}
		b := per[id-1]
		dur := "-"
		if ev.Duration > 0 {
			dur = "dur"
		}
		fmt.Fprintf(b, "S%d tx=%d intx=%v db=%s user=%s app=%s client=%s cmd=%q state=%s %s rows=%d proto=%s",
			id, ev.TxSeq, ev.InTransaction, ev.Database, ev.User, ev.ApplicationName, ev.ClientAddr, ev.Command, ev.SQLState, dur, ev.Rows, ev.Protocol)
		if ev.NumParams > 0 {
			fmt.Fprintf(b, " params=%d hash=%016x", ev.NumParams, ev.ParamHash)
		}
		if ev.Params != nil {
			fmt.Fprintf(b, " values=%q", ev.Params)
		}
		fmt.Fprintf(b, "\n    %s\n", strconv.Quote(ev.Text))
	}
	var out strings.Builder
	for _, b := range per {
		out.WriteString(b.String())
	}
	return out.String()
}

// readAll reads inputs and returns the events.
func readAll(t testing.TB, inputs []Input, opts Options) ([]*event.Event, Summary) {
	t.Helper()
	var evs []*event.Event
	sum, err := Read(context.Background(), inputs, opts, func(ev *event.Event) { evs = append(evs, ev) })
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return evs, sum
}
