// Package admin is pgaudit's operator interface: the SQL admin console that
// PgBouncer users know (SHOW POOLS, SHOW STATS, PAUSE, RELOAD, ...), the HTTP
// listener with Prometheus metrics, health checks, profiling and a JSON API,
// and the live dashboard served from the binary. The offline HTML report
// built from audit logs is package report, which renders the same page
// (WriteSelfContained).
//
// Everything here reads state at request time from the pooler.Proxy, the
// analyzer.Pipeline and a FindingsSource; nothing here runs on the relay
// path. The one piece that sees every statement is the Observer returned by
// Admin.Observer, which the analyzer pipeline calls from its workers.
//
// Lifecycle:
//
//	a := admin.New(admin.Options{...})          // before the pipeline starts
//	pipeline.AddObserver(a.Observer())          // query-latency histograms
//	cfg.Admin = a.Console()                     // the SQL console
//	p := pooler.New(cfg, pipeline, log)
//	a.Attach(p)                                 // before p.Serve
//	a.Start(ctx)                                // 10-second time-series sampler
//	addr, err := a.ListenAndServe("127.0.0.1:9930")
//	...
//	a.Close()                                   // stops the listener and the sampler
package admin
