package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/pgaudit-proxy/pgaudit/analyzer"
	"github.com/pgaudit-proxy/pgaudit/internal/auditlog"
	"github.com/pgaudit-proxy/pgaudit/internal/otlplog"
	"github.com/pgaudit-proxy/pgaudit/planadvisor"
	"github.com/pgaudit-proxy/pgaudit/pooler"
	"github.com/pgaudit-proxy/pgaudit/rules"
	"github.com/pgaudit-proxy/pgaudit/tracing"
)

// auditorOptions configure the analysis side shared by proxy, demo and lint.
type auditorOptions struct {
	Pipeline analyzer.PipelineConfig
	// AuditLog, when its Path or Writer is set, receives the records.
	AuditLog auditlog.Config
	Rules    rules.Config
	// Explain returns how the EXPLAIN sampler connects to plan a statement
	// that ran on database for client user ("" when unknown), or false to
	// leave it unplanned. The planner runs user code with the connection's
	// privileges, so the target must log in as the role the statement ran
	// as (see docs/security-explain.md). Nil disables the sampler.
	Explain         func(database, user string) (explainTarget, bool)
	ExplainInterval time.Duration
	SamplerInterval time.Duration
	// ExplainTriggerCost is the sampler's TriggerCost (0: its default).
	ExplainTriggerCost time.Duration
	// ExplainShutdownBudget bounds the last sampler round run by stop for
	// shapes not explained yet (proxy mode). Default 5s.
	ExplainShutdownBudget time.Duration
	AllowCreateExtension  bool
	// Lint runs the engine without its wall-clock timers.
	Lint bool
	// Observers are registered on the pipeline before it starts (the
	// admin's query-latency observer).
	Observers []analyzer.Observer
	// OTLPLogs, when set, also exports the audit log's records as
	// OpenTelemetry logs (otlp_logs_endpoint). Without an audit log file
	// the records are built for the exporter only.
	OTLPLogs *otlplog.Config
	Log      zerolog.Logger
}

// auditor is the running pipeline, rules engine, EXPLAIN sampler and audit
// log. Stop it once.
type auditor struct {
	// stopBudget bounds the shutdown sampler round; zero: none (lint).
	stopBudget time.Duration
	pipeline   *analyzer.Pipeline
	engine     *analyzer.Engine
	sampler    *planadvisor.Sampler
	log        *auditlog.Log
	// otlp exports the audit records as OTLP logs; nil when off. It is
	// shut down after log is closed.
	otlp *otlplog.Exporter

	mu         sync.Mutex
	explainers map[string]*planadvisor.Explainer // by explainTarget.Key
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

func startAuditor(ctx context.Context, o auditorOptions) (_ *auditor, err error) {
	a := &auditor{explainers: map[string]*planadvisor.Explainer{}}
	defer func() {
		if err != nil { // release what was opened
			if a.log != nil {
				_ = a.log.Close()
			}
			a.shutdownOTLP(o.Log)
		}
	}()
	if !o.Lint {
		a.stopBudget = cmp.Or(o.ExplainShutdownBudget, defaultExplainShutdownBudget)
	}
	cfg := o.Pipeline
	cfg.Logger = o.Log
	ac := o.AuditLog
	if o.OTLPLogs != nil {
		oc := *o.OTLPLogs
		oc.Logger = o.Log
		exp, err := otlplog.New(oc)
		if err != nil {
			return nil, err
		}
		a.otlp = exp
		ac.Mirror = exp
		if ac.Path == "" && ac.Writer == nil {
			ac.Writer = io.Discard
		}
	}
	if ac.Path != "" || ac.Writer != nil {
		ac.Logger = o.Log
		al, err := auditlog.Open(ac)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		a.log = al
		cfg.AuditLog = al
	}
	a.pipeline = analyzer.NewPipeline(cfg)
	eng, err := analyzer.NewEngine(analyzer.EngineConfig{Rules: o.Rules, Stats: a.pipeline.Stats(), AuditLog: a.log, Logger: o.Log, WholeInput: o.Lint})
	if err != nil {
		return nil, err
	}
	a.engine = eng
	if err := a.pipeline.AddObserver(eng); err != nil {
		return nil, err
	}
	if o.Explain != nil {
		s, err := planadvisor.NewSampler(planadvisor.SamplerConfig{
			Stats: a.pipeline.Stats(),
			ExplainerFor: func(database, user string) *planadvisor.Explainer {
				return a.explainer(database, user, o)
			},
			Emit:            func(f *rules.Finding) { eng.Report(*f) },
			Explained:       eng.ResolvePlan,
			Rules:           o.Rules,
			Interval:        o.SamplerInterval,
			TriggerCost:     o.ExplainTriggerCost,
			ExplainInterval: o.ExplainInterval,
			Logger:          o.Log,
		})
		if err != nil {
			return nil, err
		}
		a.sampler = s
		if err := a.pipeline.AddObserver(s); err != nil {
			return nil, err
		}
	}
	for _, ob := range o.Observers {
		if err := a.pipeline.AddObserver(ob); err != nil {
			return nil, err
		}
	}
	ctx, a.cancel = context.WithCancel(ctx)
	if err := a.pipeline.Start(ctx); err != nil {
		return nil, fmt.Errorf("audit pipeline: %w", err)
	}
	if !o.Lint {
		if err := eng.Start(ctx); err != nil {
			return nil, err
		}
		if a.sampler != nil {
			a.wg.Add(1)
			go func() { defer a.wg.Done(); _ = a.sampler.Run(ctx) }()
		}
	}
	return a, nil
}

// defaultExplainShutdownBudget bounds the sampler round at shutdown.
const defaultExplainShutdownBudget = 5 * time.Second

// explainTarget is a connection for the EXPLAIN sampler: DSN or Conn,
// either naming its user explicitly, and the role it must be logged in as.
type explainTarget struct {
	// Key identifies the connection (explainers are shared by key).
	Key  string
	DSN  string
	Conn *pgconn.Config
	// Role is ExplainConfig.Role: the role of the statements planned on
	// this connection, checked on every new connection; "" only for lint,
	// which plans every logged statement as its --dsn role.
	Role string
	// PerClient marks a connection logged in as one client's own role:
	// one of possibly many, so it holds one connection at most, and none
	// while idle.
	PerClient bool
}

// explainer returns the (lazily created) explainer for statements of a
// database and client user, or nil when they are not to be planned.
func (a *auditor) explainer(database, user string, o auditorOptions) *planadvisor.Explainer {
	t, ok := o.Explain(database, user)
	if !ok {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.explainers[t.Key]; ok {
		return e
	}
	ec := planadvisor.ExplainConfig{DSN: t.DSN, Conn: t.Conn, Role: t.Role,
		AllowCreateExtension: o.AllowCreateExtension, Logger: o.Log}
	if t.PerClient {
		ec.MaxConns, ec.CloseIdle = 1, true
	}
	e, err := planadvisor.NewExplainer(ec)
	if err != nil {
		o.Log.Warn().Err(err).Str("database", database).Str("role", t.Role).Msg("EXPLAIN sampler disabled for this database and role")
		e = nil
	}
	a.explainers[t.Key] = e
	return e
}

// explainNow runs one sampler round at once (demo and lint).
func (a *auditor) explainNow(ctx context.Context) int {
	if a.sampler == nil {
		return 0
	}
	return a.sampler.RunOnce(ctx)
}

// observePools feeds pool statistics to the pool-saturation rule.
func (a *auditor) observePools(stats []pooler.PoolStats) {
	now := time.Now()
	for _, ps := range stats {
		a.engine.ObservePool(rules.PoolFacts{
			Database: ps.Database, User: ps.User, Mode: ps.Mode, Size: ps.Size,
			Utilization: ps.Utilization, Window: ps.Window,
			Acquires: ps.RecentAcquires, Waits: ps.RecentWaits,
			WaitP99: ps.RecentWaitP99, MaxWait: ps.RecentMaxWait,
			Connects: ps.Connects, ConnectP99: ps.ConnectP99, ConnectMax: ps.ConnectMax,
			ClientsWaiting: ps.ClientsWaiting, ClientsActive: ps.ClientsActive, At: now,
		})
	}
}

// stop drains the pipeline, flushes the rules and closes everything.
func (a *auditor) stop(log zerolog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.pipeline.Stop(ctx); err != nil {
		log.Warn().Err(err).Msg("audit pipeline did not drain")
	}
	// Loops still open when the traffic stopped are judged now.
	a.engine.Stop()
	a.engine.Flush()
	a.cancel()
	a.wg.Wait()
	// Shapes the sampler has not explained yet (a short run: a test suite
	// through the proxy) get one last round, within a bounded budget.
	if a.sampler != nil && a.stopBudget > 0 {
		ectx, ecancel := context.WithTimeout(context.Background(), a.stopBudget)
		if n := a.sampler.RunOnce(ectx); n > 0 {
			log.Info().Int("shapes", n).Msg("explained pending shapes at shutdown")
		}
		ecancel()
	}
	if c := a.pipeline.Counters(); c.Dropped > 0 {
		log.Warn().Uint64("dropped", c.Dropped).Msg("audit events dropped because the queue was full")
	}
	a.mu.Lock()
	for _, e := range a.explainers {
		if e != nil {
			e.Close()
		}
	}
	a.mu.Unlock()
	if a.log != nil {
		_ = a.log.Close()
	}
	a.shutdownOTLP(log)
}

// otlpShutdownBudget bounds the last OTLP log export at shutdown.
const otlpShutdownBudget = 5 * time.Second

// shutdownOTLP exports the queued OTLP log records (within
// otlpShutdownBudget) and stops the exporter; a no-op when it is off.
func (a *auditor) shutdownOTLP(log zerolog.Logger) {
	if a.otlp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), otlpShutdownBudget)
	defer cancel()
	if err := a.otlp.Shutdown(ctx); err != nil {
		log.Warn().Err(err).Msg("OTLP log exporter did not flush")
	}
	if c := a.otlp.Counters(); c.Dropped > 0 || c.Failed > 0 {
		log.Warn().Uint64("exported", c.Exported).Uint64("failed", c.Failed).Uint64("dropped", c.Dropped).
			Msg("OTLP log records not delivered (the audit log file has them)")
	}
}

// traceObserver feeds every analyzed statement to the span emitter: the
// analyzer's result mapped onto tracing.Statement, so that tracing depends
// on the event contract only.
func traceObserver(o *tracing.Observer) analyzer.Observer {
	return analyzer.ObserverFunc(func(a *analyzer.Analyzed) {
		st := tracing.Statement{Event: a.Event, TraceParent: a.TraceParent}
		if a.Shape != nil {
			st.Normalized, st.Fingerprint = a.Shape.Normalized, a.Shape.Fingerprint
		}
		o.Record(st)
	})
}
