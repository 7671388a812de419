package pooler

import "time"

// pendingKind is a client request whose responses are still to come.
type pendingKind uint8

const (
	pendParse pendingKind = iota + 1
	pendBind
	pendDescribeStmt
	pendDescribePortal
	pendExecute
	pendClose
	pendSync
	pendQuery
	pendFunctionCall
	// pendGate is the Bind the proxy sends instead of a client's Bind or
	// Describe after a shape probe found another shape (see shapegate.go):
	// its error becomes 0A000, after params[0] if set.
	pendGate
)

// pending is one expected response, in the order the server will send them.
// synthetic items are answered by the proxy itself (a Parse of a statement
// the server already has, a Close of a client-side name); swallow items were
// injected by the proxy and their success responses are not forwarded.
type pending struct {
	// (The flags and small counts come first, packed into two words: a
	// pending item is copied into the queue and cleared from it once per
	// message, so its size is paid per message.)
	kind      pendingKind
	synthetic bool
	swallow   bool
	addedStmt bool
	// probe marks the Describe of a shape probe (see shapegate.go).
	probe bool
	inTx  bool
	// holdZ: this Query or Sync (of a group with such an Execute) may
	// return settings to their reset values; a restore query follows it
	// (see restoreStartupLocked), and its ParameterStatus messages and
	// ReadyForQuery are held until that is answered. On a portal: its
	// statement may reset settings.
	holdZ bool
	// nresults counts a Query's results (see addResult).
	nresults int32
	// numParams is the number of bound parameters (audit data).
	numParams int32
	// serverStmt is the server-side statement name a Parse/Bind/Describe
	// refers to (transaction mode), to undo cache entries on error.
	serverStmt string
	// stmt is the client's statement a Parse prepares or a Describe
	// describes (transaction mode).
	stmt *stmtDef

	// audit data for Execute and Query
	text      string
	start     time.Time
	paramHash uint64
	params    []string
	txSeq     uint64
	portal    string
	// resultHash is an Execute's sampled result hash (see
	// Session.endResultLocked), set when its CommandComplete arrives.
	resultHash uint64
	// A Query's results, one per statement: the first inline (most
	// Queries have one statement), the others in moreResults (see
	// addResult).
	firstResult stmtResult
	moreResults []stmtResult
	// tag, for a Query the proxy rewrote (DEALLOCATE of a client's
	// protocol-level statement), replaces the command tag of its result,
	// whose RowDescription is dropped.
	tag string
}

// portal is a client's bound portal: its statement and the audit data
// its Executes carry.
type portal struct {
	stmt      *stmtDef
	text      string
	params    []string
	paramHash uint64
	numParams int32
	// holdZ: the portal's statement may reset settings (see
	// pending.holdZ).
	holdZ bool
}

// stmtResult is how one statement of a simple Query ended: its command
// tag split as parseTag does (command "" for an EmptyQueryResponse), or
// its error.
type stmtResult struct {
	command    string
	rows       int64
	sqlstate   string
	at         time.Time
	resultHash uint64 // see Session.endResultLocked
}

// addResult records the end of the Query's next statement.
func (p *pending) addResult(r stmtResult) {
	if p.nresults == 0 {
		p.firstResult = r
	} else {
		p.moreResults = append(p.moreResults, r)
	}
	p.nresults++
}

// result returns the end of the Query's statement i (< nresults).
func (p *pending) result(i int32) *stmtResult {
	if i == 0 {
		return &p.firstResult
	}
	return &p.moreResults[i-1]
}

// pendingQueue is a FIFO of pending items with amortized O(1) operations.
type pendingQueue struct {
	items []pending
	head  int
}

func (q *pendingQueue) push(p pending) { q.items = append(q.items, p) }

// add appends a zero item of the given kind and returns it for the caller
// to fill in place, valid until the next add, push or pop: a pending item
// is large, and building it in a local and pushing it copies it twice.
func (q *pendingQueue) add(kind pendingKind) *pending {
	q.items = append(q.items, pending{})
	it := &q.items[len(q.items)-1]
	it.kind = kind
	return it
}

func (q *pendingQueue) len() int { return len(q.items) - q.head }

// front returns the oldest item or nil.
func (q *pendingQueue) front() *pending {
	if q.head < len(q.items) {
		return &q.items[q.head]
	}
	return nil
}

func (q *pendingQueue) pop() {
	q.items[q.head] = pending{}
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head = 0
	}
}

func (q *pendingQueue) reset() {
	clear(q.items)
	q.items = q.items[:0]
	q.head = 0
}
