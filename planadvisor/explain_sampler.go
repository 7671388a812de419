package planadvisor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/event"
	"github.com/pgaudit-proxy/pgaudit/internal/lru"
	"github.com/pgaudit-proxy/pgaudit/internal/sqlscan"
	"github.com/pgaudit-proxy/pgaudit/rules"
)

// SamplerConfig configures a Sampler. Stats, Emit and one of Explainer or
// ExplainerFor are required.
type SamplerConfig struct {
	// Stats is where shapes come from (in order of total time).
	Stats *analyzer.Stats
	// Explainer explains every shape, unless ExplainerFor is set.
	Explainer *Explainer
	// ExplainerFor picks the explainer for the database and client user
	// the shape last ran with (either "" when unknown: the shape came from
	// a merged snapshot, or a log without them); nil skips the shape. The
	// planner runs user code with the privileges of the explainer's
	// connection, so the explainer returned must be logged in as the role
	// that execution ran as (ExplainConfig.Role), or be nil. The Sampler
	// does not close explainers.
	ExplainerFor func(database, user string) *Explainer
	// Emit receives every finding (seq-scan, missing-index), on the
	// goroutine running the round; it must not call RunOnce. Findings are
	// not filtered by Rules' ignore entries or severities: pass them
	// through rules.Config.Apply.
	Emit func(*rules.Finding)
	// Explained, when set, is called after each shape explained
	// successfully with its fingerprint and the ids of the findings the
	// new plan produced (after Emit), so findings the plan no longer
	// shows can be resolved (Engine.ResolvePlan).
	Explained func(fingerprint string, ids []string, at time.Time)
	// Rules supplies the seq-scan and missing-index thresholds; a rule
	// disabled here is not evaluated (both disabled: nothing is explained).
	Rules rules.Config
	// Interval is how often a round runs. Default 30s.
	Interval time.Duration
	// TriggerCost: a shape not yet explained whose statements have taken
	// this much time altogether (since the sampler first saw it) starts a
	// round at once, without waiting for Interval. Default 100ms; negative
	// turns triggering off.
	TriggerCost time.Duration
	// MinRoundGap is the least time between the end of one round and the
	// start of a triggered one (rate limit). Default 2s.
	MinRoundGap time.Duration
	// ExplainInterval is how long a shape rests after being checked.
	// Default 10 minutes.
	ExplainInterval time.Duration
	// TopShapes is how many shapes, by total time, a round considers.
	// Default 50.
	TopShapes int
	// MaxPerRound caps the shapes explained per round. Default 10.
	MaxPerRound int
	// MinCalls skips shapes with fewer calls. Default 1.
	MinCalls uint64
	// ExampleSlots bounds the shapes whose example parameters and database
	// are remembered (in memory only). Default 1000.
	ExampleSlots int
	// Logger receives per-shape failures (never parameter values).
	Logger zerolog.Logger
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

const (
	defaultSamplerInterval = 30 * time.Second
	defaultTriggerCost     = 100 * time.Millisecond
	defaultMinRoundGap     = 2 * time.Second
	defaultExplainInterval = 10 * time.Minute
	defaultSamplerTop      = 50
	defaultSamplerPerRound = 10
	defaultExampleSlots    = 1000
)

// SamplerCounters are a Sampler's cumulative counters.
type SamplerCounters struct {
	// Rounds counts completed rounds.
	Rounds uint64 `json:"rounds"`
	// Checked counts shapes sent to an explainer.
	Checked uint64 `json:"checked"`
	// NotExplainable counts shapes refused by CheckExplainable.
	NotExplainable uint64 `json:"not_explainable"`
	// Failed counts shapes whose explain failed (timeouts included).
	Failed uint64 `json:"failed"`
	// Timeouts counts shapes whose explain hit statement_timeout or
	// lock_timeout.
	Timeouts uint64 `json:"timeouts"`
	// UserCode counts shapes refused because planning them would run
	// user-defined code (ErrRunsUserCode); they are never tried again.
	UserCode uint64 `json:"user_code"`
	// Findings counts findings emitted.
	Findings uint64 `json:"findings"`
}

// Sampler is the EXPLAIN sampler: each round it takes the shapes with the
// most total time from Stats, explains each at most once per
// ExplainInterval (the explainer rate-limits), evaluates the seq-scan and
// missing-index rules on the plans and emits the findings.
//
// Register it as a pipeline Observer to give it each shape's database and,
// when parameter capture is on, example parameter values; those stay in
// memory and are never logged. Lifecycle: NewSampler, then Run (once) in
// its own goroutine until its context ends. Observe, Counters and RunOnce
// are safe to call concurrently with Run.
type Sampler struct {
	cfg  SamplerConfig
	log  zerolog.Logger
	now  func() time.Time
	seen *lru.Cache[event.Fingerprint, *shapeExample]

	mu      sync.Mutex // serializes rounds; guards checked
	checked map[event.Fingerprint]time.Time
	// userCode holds the shapes whose check found user code: they are
	// never explained again (bounded like seen).
	userCode *lru.Cache[event.Fingerprint, struct{}]
	// writeReadings holds, per table, the reading of its write counters
	// that the next write rate is measured from (guarded by mu).
	writeReadings map[tableRef]writeReading
	// trigger asks Run for a round now (a shape has cost TriggerCost).
	trigger chan struct{}
	// checkedFPs mirrors checked's keys for Observe, which must not
	// wait for a round's lock.
	checkedFPs sync.Map

	rounds, shapes, refused, failed, timeouts, findings, userCodeN atomic.Uint64
}

// shapeExample is what Observe remembers of a shape.
type shapeExample struct {
	database string
	// user is the client user that ran the example (Event.User): the
	// explainer must plan as the role it ran as.
	user   string
	params []string
	// text is an example statement as the client sent it (memory only):
	// explaining it rather than the normalized shape keeps positional
	// GROUP BY/ORDER BY numbers and the like, which normalization turns
	// into parameters.
	text string
	// at is when the example was taken (the event's start).
	at time.Time
	// denied marks a shape whose example execution's user was then
	// refused with a privilege error: not explained until that or another
	// user runs it successfully.
	denied bool
	// cost is the time the shape's statements took since the sampler saw
	// it (nanoseconds); triggered says it already asked for a round.
	cost      atomic.Int64
	triggered atomic.Bool
}

// exampleRefresh is how long a shape's example with parameters is kept
// before a later execution replaces it: one recent example is all EXPLAIN
// needs, and copying every execution's parameters cost an allocation per
// statement.
const exampleRefresh = 10 * time.Second

// maxExampleText bounds the example statements kept in memory.
const maxExampleText = 64 << 10

// NewSampler validates cfg and returns a Sampler.
func NewSampler(cfg SamplerConfig) (*Sampler, error) {
	if cfg.Stats == nil {
		return nil, errors.New("sampler: Stats is required")
	}
	if cfg.Explainer == nil && cfg.ExplainerFor == nil {
		return nil, errors.New("sampler: Explainer or ExplainerFor is required")
	}
	if cfg.Emit == nil {
		return nil, errors.New("sampler: Emit is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = defaultSamplerInterval
	}
	if cfg.ExplainInterval <= 0 {
		cfg.ExplainInterval = defaultExplainInterval
	}
	if cfg.TopShapes <= 0 {
		cfg.TopShapes = defaultSamplerTop
	}
	if cfg.MaxPerRound <= 0 {
		cfg.MaxPerRound = defaultSamplerPerRound
	}
	if cfg.MinCalls == 0 {
		cfg.MinCalls = 1
	}
	if cfg.ExampleSlots <= 0 {
		cfg.ExampleSlots = defaultExampleSlots
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TriggerCost == 0 {
		cfg.TriggerCost = defaultTriggerCost
	}
	if cfg.MinRoundGap <= 0 {
		cfg.MinRoundGap = defaultMinRoundGap
	}
	cfg.Rules = cfg.Rules.WithDefaults()
	return &Sampler{
		cfg:      cfg,
		log:      cfg.Logger,
		now:      cfg.Now,
		seen:     lru.New[event.Fingerprint, *shapeExample](cfg.ExampleSlots),
		userCode: lru.New[event.Fingerprint, struct{}](cfg.ExampleSlots),
		checked:  make(map[event.Fingerprint]time.Time),
		trigger:  make(chan struct{}, 1),
	}, nil
}

// Observe remembers the event's database and user and, when it carries
// captured parameter values, a copy of them as the shape's example. An
// execution that failed with a privilege error (PrivilegeError) never
// becomes the example; it marks the shape denied unless an example of
// another database or user is held (that one may still be planned as its
// own role), until a later execution succeeds: a statement its client was
// denied is not planned for it. It implements Observer; it does no I/O.
func (s *Sampler) Observe(a *analyzer.Analyzed) {
	if a.Shape == nil || a.Event == nil || a.Event.Kind != event.KindStatement {
		return
	}
	db, user := a.Event.Database, a.Event.User
	old, ok := s.seen.Get(a.Shape.Fingerprint)
	if PrivilegeError(a.Event.SQLState) {
		if !ok || old.denied || (old.database == db && old.user == user) {
			s.seen.Add(a.Shape.Fingerprint, &shapeExample{denied: true, at: a.Event.Start})
		}
		return
	}
	text := ""
	if a.Event.SQLState == "" && len(a.Event.Text) <= maxExampleText && a.Event.Protocol != event.ProtocolLog {
		text = a.Event.Text
	}
	if ok {
		s.account(a.Shape.Fingerprint, old, a.Event.Duration)
	}
	if len(a.Event.Params) > 0 && a.Event.SQLState == "" {
		if ok && old.database == db && old.user == user && old.params != nil && a.Event.Start.Sub(old.at) < exampleRefresh {
			return // a recent example with parameters is held
		}
		s.seen.Add(a.Shape.Fingerprint, s.carry(old, &shapeExample{database: db, user: user, params: slices.Clone(a.Event.Params), text: text, at: a.Event.Start}, ok))
		return
	}
	if ok && !old.denied && old.database == db && old.user == user {
		return // keep the example already held
	}
	s.seen.Add(a.Shape.Fingerprint, s.carry(old, &shapeExample{database: db, user: user, text: text, at: a.Event.Start}, ok))
}

// PrivilegeError reports whether a SQLSTATE is a privilege or
// authorization failure: class 28 (invalid authorization specification),
// class 42 (syntax error or access rule violation, which holds 42501
// insufficient_privilege), 0L (invalid grantor) and 0P (invalid role
// specification). A statement that failed so for its client is never
// planned for it.
func PrivilegeError(sqlstate string) bool {
	if len(sqlstate) != 5 {
		return false
	}
	switch sqlstate[:2] {
	case "28", "42", "0L", "0P":
		return true
	}
	return false
}

// carry moves the cost bookkeeping of the example old (when ok) to its
// replacement ex.
func (s *Sampler) carry(old, ex *shapeExample, ok bool) *shapeExample {
	if ok {
		ex.cost.Store(old.cost.Load())
		ex.triggered.Store(old.triggered.Load())
	}
	return ex
}

// account adds d to the shape's cost and asks for a round when a shape not
// yet explained crosses TriggerCost.
func (s *Sampler) account(fp event.Fingerprint, ex *shapeExample, d time.Duration) {
	if s.cfg.TriggerCost < 0 || ex.triggered.Load() {
		return
	}
	if time.Duration(ex.cost.Add(int64(max(d, 0)))) < s.cfg.TriggerCost {
		return
	}
	if _, done := s.checkedFPs.Load(fp); done || ex.triggered.Swap(true) {
		return
	}
	select {
	case s.trigger <- struct{}{}:
	default: // a round is already asked for
	}
}

// Counters returns the cumulative counters. Safe to call at any time.
func (s *Sampler) Counters() SamplerCounters {
	return SamplerCounters{
		Rounds: s.rounds.Load(), Checked: s.shapes.Load(), NotExplainable: s.refused.Load(),
		Failed: s.failed.Load(), Timeouts: s.timeouts.Load(), Findings: s.findings.Load(),
		UserCode: s.userCodeN.Load(),
	}
}

// Run runs a round at once, then every Interval, and sooner when a shape
// not yet explained has cost TriggerCost (at most one round per
// MinRoundGap), until ctx ends; it returns nil then. A failing shape is
// logged and counted, never fatal. Shapes still pending when ctx ends are
// left to the caller: RunOnce with a bounded context at shutdown.
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.RunOnce(ctx)
		last := time.Now()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.trigger:
			gap := time.NewTimer(max(s.cfg.MinRoundGap-time.Since(last), 0))
			select {
			case <-ctx.Done():
				gap.Stop()
				return nil
			case <-gap.C:
			}
		}
	}
}

// RunOnce runs one round and returns the number of shapes explained
// successfully. Rounds do not overlap: a call waits for one in progress.
func (s *Sampler) RunOnce(ctx context.Context) int {
	seqOn, idxOn := s.cfg.Rules.Enabled(rules.IDSeqScan), s.cfg.Rules.Enabled(rules.IDMissingIndex)
	if !seqOn && !idxOn {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.rounds.Add(1)
	now := s.now()
	for fp, at := range s.checked {
		if now.Sub(at) >= s.cfg.ExplainInterval {
			delete(s.checked, fp)
			s.checkedFPs.Delete(fp)
			if ex, ok := s.seen.Get(fp); ok {
				ex.cost.Store(0)
				ex.triggered.Store(false)
			}
		}
	}
	done, tried := 0, 0
	for _, sh := range s.cfg.Stats.TopShapes(analyzer.ByTotalTime, s.cfg.TopShapes) {
		if ctx.Err() != nil || tried >= s.cfg.MaxPerRound {
			break
		}
		if sh.Fingerprint == 0 || sh.Fallback || sh.Query == "" || sh.Calls < s.cfg.MinCalls {
			continue
		}
		if _, ok := s.checked[sh.Fingerprint]; ok {
			continue
		}
		if _, ok := s.userCode.Get(sh.Fingerprint); ok {
			continue
		}
		ex := &shapeExample{}
		if e, ok := s.seen.Get(sh.Fingerprint); ok {
			ex = e // its fields but the counters are never modified
		}
		if ex.denied {
			continue
		}
		exp := s.cfg.Explainer
		if s.cfg.ExplainerFor != nil {
			exp = s.cfg.ExplainerFor(ex.database, ex.user)
		}
		if exp == nil {
			continue
		}
		s.checked[sh.Fingerprint] = now
		s.checkedFPs.Store(sh.Fingerprint, struct{}{})
		if _, err := CheckExplainable(sh.Query); err != nil {
			s.refused.Add(1)
			continue
		}
		if ex.text == "" && positionalParamRef(sh.Query) {
			// Normalization turned GROUP BY 1 / ORDER BY 2 into $n; without
			// the original text the statement no longer means the same.
			s.refused.Add(1)
			continue
		}
		tried++
		s.shapes.Add(1)
		req := ExplainRequest{Query: sh.Query, Params: ex.params}
		if ex.text != "" {
			req.Query, req.Literal = ex.text, true
			if _, err := CheckExplainable(ex.text); err != nil {
				req.Query, req.Literal = sh.Query, false
			}
		}
		in, err := exp.Inspect(ctx, req, InspectOptions{
			SeqScan:      s.cfg.Rules.SeqScan,
			MissingIndex: s.cfg.Rules.MissingIndex,
			NoAdvice:     !idxOn,
		})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, ErrRunsUserCode) {
				s.userCode.Add(sh.Fingerprint, struct{}{})
				s.userCodeN.Add(1)
				s.log.Info().Str("fingerprint", sh.Fingerprint.String()).Str("reason", err.Error()).Msg("explain sampler: shape not explained, planning it would run user-defined code")
				continue
			}
			s.failed.Add(1)
			if errors.Is(err, ErrExplainTimeout) {
				s.timeouts.Add(1)
			}
			// The explainer logged the failure (once, with its SQLSTATE).
			s.log.Debug().Err(err).Str("fingerprint", sh.Fingerprint.String()).Msg("explain sampler: shape not checked")
			continue
		}
		done++
		s.measureWrites(ex.database, in)
		var ids []string
		for _, f := range PlanFindings(&sh, ex.database, in, s.cfg.Rules) {
			if (f.Rule == rules.IDSeqScan && !seqOn) || (f.Rule == rules.IDMissingIndex && !idxOn) {
				continue
			}
			s.findings.Add(1)
			ids = append(ids, f.ID)
			s.cfg.Emit(f)
		}
		if s.cfg.Explained != nil {
			s.cfg.Explained(sh.Fingerprint.String(), ids, s.now())
		}
	}
	return done
}

// PlanFindings evaluates the seq-scan and missing-index rules on one shape's
// inspection and returns the findings (seq-scan first for each scanned
// table, then its missing-index finding). database may be empty. Pure:
// no I/O.
func PlanFindings(sh *analyzer.ShapeStats, database string, in *Inspection, cfg rules.Config) []*rules.Finding {
	shape := rules.PlanShapeFacts{
		Fingerprint: sh.Fingerprint.String(),
		Query:       sh.Query,
		Database:    database,
		Calls:       sh.Calls,
		TotalTime:   sh.Total,
		MeanTime:    sh.Mean,
		FirstSeen:   sh.FirstSeen,
		LastSeen:    sh.LastSeen,
	}
	if shape.MeanTime == 0 && sh.Calls > 0 {
		shape.MeanTime = sh.Total / time.Duration(sh.Calls)
	}
	var out []*rules.Finding
	for i := range in.Scans {
		rep := &in.Scans[i]
		if rep.Table == nil {
			continue
		}
		adv := rep.Advice
		f := rules.SeqScanFacts{
			PlanShapeFacts:        shape,
			Schema:                rep.Table.Schema,
			Table:                 rep.Table.Name,
			Filter:                rep.Filter,
			EstimatedRowsScanned:  rep.Table.RelTuples,
			EstimatedRowsReturned: rep.Rows,
			ScanCost:              rep.Cost,
			PlanCost:              in.Plan.TotalCost(),
			Parallel:              rep.Parallel,
			RowsPerProcess:        rep.NodeRows,
			GenericPlan:           in.Mode.Generic(),
			PlanExcerpt:           rep.Excerpt(),
		}
		if adv != nil {
			f.SuggestedIndex = adv.CreateStatement
		}
		if fd := rules.EvaluateSeqScan(f, cfg.SeqScan); fd != nil {
			out = append(out, fd)
		}
		if adv == nil || len(adv.Columns) == 0 {
			continue
		}
		ti := rep.Table
		fi := rules.IndexCandidateFacts{
			PlanShapeFacts:  shape,
			Schema:          ti.Schema,
			Table:           ti.Name,
			Columns:         adv.Columns,
			CreateStatement: adv.CreateStatement,
			Validated:       adv.Validated,
			CostBefore:      adv.CostBefore,
			CostAfter:       adv.CostAfter,
			ValidationNote:  adv.Note,
			TableRows:       ti.RelTuples,
			WriteStatsKnown: ti.StatsKnown,
			RowsInserted:    ti.Inserted,
			RowsUpdated:     ti.Updated,
			RowsDeleted:     ti.Deleted,
			RowsReadSeq:     ti.SeqTupRead,
			RowsFetchedIdx:  ti.IdxTupFetch,
			StatsSeconds:    ti.StatsSeconds,
			WriteRateWindow: ti.WriteRateWindow,
			WritesInWindow:  ti.WritesInWindow,
			ExistingIndexes: len(ti.Indexes),
		}
		if fd := rules.EvaluateMissingIndex(fi, cfg.MissingIndex); fd != nil {
			out = append(out, fd)
		}
	}
	return out
}

// positionalParamRef reports whether a normalized statement has a
// parameter as a GROUP BY or ORDER BY item ("GROUP BY $1"): normalization
// made it from a column position, and EXPLAIN of it would fail or mean
// something else.
func positionalParamRef(q string) bool {
	l := sqlscan.New(q)
	var prev string // previous significant token, upper-cased when an ident
	inList := false
	for {
		kind, s, e, ok := l.Next()
		if !ok {
			return false
		}
		if kind == sqlscan.Space || kind == sqlscan.Comment {
			continue
		}
		tok := q[s:e]
		switch kind {
		case sqlscan.Ident:
			up := strings.ToUpper(tok)
			if up == "BY" && (prev == "GROUP" || prev == "ORDER") {
				inList = true
			} else if inList && prev != "," && prev != "BY" {
				switch up {
				case "HAVING", "LIMIT", "OFFSET", "WINDOW", "FOR", "UNION", "INTERSECT", "EXCEPT", "FETCH":
					inList = false
				}
			}
			prev = up
			continue
		case sqlscan.Param:
			if inList && (prev == "BY" || prev == ",") {
				return true
			}
		case sqlscan.Other:
			if tok == ")" || tok == ";" {
				inList = false
			}
		}
		prev = tok
	}
}

// tableRef names a table across databases.
type tableRef struct {
	database string
	oid      uint32
}

// writeReading is a table's rows written (inserted + updated + deleted,
// cumulative) at a moment.
type writeReading struct {
	total int64
	at    time.Time
}

const (
	// minWriteRateWindow is the shortest span a write rate is measured
	// over; readings closer together are too noisy.
	minWriteRateWindow = 10 * time.Second
	// maxWriteRateWindow is when a reading is replaced, so the rate
	// follows the table's recent writes rather than its whole history.
	maxWriteRateWindow = 10 * time.Minute
	// maxWriteReadings bounds writeReadings.
	maxWriteReadings = 10000
)

// measureWrites fills the write rate of each table the inspection read
// from the readings this sampler took before, and records new readings.
// The caller holds s.mu.
func (s *Sampler) measureWrites(database string, in *Inspection) {
	if s.writeReadings == nil || len(s.writeReadings) >= maxWriteReadings {
		s.writeReadings = make(map[tableRef]writeReading)
	}
	now := s.now()
	for i := range in.Scans {
		ti := in.Scans[i].Table
		if ti == nil || !ti.StatsKnown {
			continue
		}
		ref := tableRef{database, ti.OID}
		total := max(ti.Inserted, 0) + max(ti.Updated, 0) + max(ti.Deleted, 0)
		prev, ok := s.writeReadings[ref]
		switch {
		case !ok || total < prev.total || now.Before(prev.at):
			// First reading, or the statistics were reset.
			s.writeReadings[ref] = writeReading{total, now}
		case now.Sub(prev.at) >= minWriteRateWindow:
			ti.WriteRateWindow = now.Sub(prev.at).Seconds()
			ti.WritesInWindow = total - prev.total
			if now.Sub(prev.at) >= maxWriteRateWindow {
				s.writeReadings[ref] = writeReading{total, now}
			}
		}
	}
}
