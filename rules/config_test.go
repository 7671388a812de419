package rules

import (
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const sampleTOML = `
[rules.n-plus-one]
min_repeats = 8
max_gap = "250ms"
severity = "error"

[rules.slow-query]
p99_threshold = 0.75   # seconds
min_calls = 100

[rules.pool-saturation]
enabled = false

[rules.seq-scan]
min_table_rows = 50000
max_selectivity = 0.05

[rules.missing-index]
min_cost_reduction = 0.7

[[rules.ignore]]
rule = "seq-scan"
table = "audit_log"
reason = "append-only, scanned by the nightly job"

[[rules.ignore]]
fingerprint = "00ab12cd34ef5678"
`

// TestConfigTOML decodes the [rules] tables the way cmd does: the file's
// top-level table holds Config under "rules".
func TestConfigTOML(t *testing.T) {
	t.Parallel()
	var file struct {
		Rules Config `toml:"rules"`
	}
	md, err := toml.Decode(sampleTOML, &file)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Fatalf("undecoded keys %v", und)
	}
	c := file.Rules
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if c.NPlusOne.MinRepeats != 8 || time.Duration(c.NPlusOne.MaxGap) != 250*time.Millisecond {
		t.Errorf("n-plus-one %+v", c.NPlusOne)
	}
	if c.Severity(IDNPlusOne) != Error || c.Severity(IDSlowQuery) != Warning || c.Severity(IDMissingIndex) != Warning {
		t.Errorf("severities %v %v %v", c.Severity(IDNPlusOne), c.Severity(IDSlowQuery), c.Severity(IDMissingIndex))
	}
	if time.Duration(c.SlowQuery.P99Threshold) != 750*time.Millisecond || c.SlowQuery.MinCalls != 100 {
		t.Errorf("slow-query %+v", c.SlowQuery)
	}
	if c.Enabled(IDPoolSaturation) || !c.Enabled(IDSeqScan) || c.Enabled("no-such-rule") {
		t.Error("enabled flags wrong")
	}
	if c.PoolSaturation.Utilization != DefaultPoolUtilization || time.Duration(c.PoolSaturation.P99Wait) != DefaultPoolP99Wait {
		t.Errorf("defaults not filled: %+v", c.PoolSaturation)
	}
	if c.SeqScan.MinTableRows != 50000 || c.SeqScan.MaxSelectivity != 0.05 || c.MissingIndex.MinCostReduction != 0.7 {
		t.Errorf("plan rules %+v %+v", c.SeqScan, c.MissingIndex)
	}
	if len(c.Ignore) != 2 || c.Ignore[0].Table != "audit_log" || c.Ignore[1].Fingerprint != "00ab12cd34ef5678" {
		t.Errorf("ignores %+v", c.Ignore)
	}
	// And back: the config encodes to TOML that decodes to the same.
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(file); err != nil {
		t.Fatal(err)
	}
	var again struct {
		Rules Config `toml:"rules"`
	}
	if _, err := toml.Decode(b.String(), &again); err != nil {
		t.Fatalf("re-decode %v:\n%s", err, b.String())
	}
	if again.Rules.NPlusOne.MaxGap != file.Rules.NPlusOne.MaxGap || *again.Rules.NPlusOne.Severity != Error {
		t.Errorf("round trip lost values:\n%s", b.String())
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := DefaultConfig()
	for _, id := range RuleIDs() {
		if !c.Enabled(id) {
			t.Errorf("%s disabled by default", id)
		}
		if c.Severity(id) != DefaultSeverity(id) {
			t.Errorf("%s severity %v", id, c.Severity(id))
		}
	}
	if c.NPlusOne.MinRepeats != 5 || time.Duration(c.NPlusOne.MaxGap) != 100*time.Millisecond ||
		time.Duration(c.SlowQuery.P99Threshold) != 500*time.Millisecond || c.SlowQuery.MinCalls != 10 ||
		c.PoolSaturation.Utilization != 0.8 || time.Duration(c.PoolSaturation.P99Wait) != 50*time.Millisecond ||
		c.SeqScan.MinTableRows != 10000 || c.SeqScan.MaxSelectivity != 0.1 || c.MissingIndex.MinCostReduction != 0.5 {
		t.Errorf("defaults %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	sev := Severity(7)
	bad := Config{
		NPlusOne:       NPlusOneConfig{MinRepeats: 1, MaxGap: -1},
		PoolSaturation: PoolSaturationConfig{Utilization: 1.5},
		SeqScan:        SeqScanConfig{MaxSelectivity: 2},
		MissingIndex:   MissingIndexConfig{MinCostReduction: 1},
		SlowQuery:      SlowQueryConfig{Common: Common{Severity: &sev}},
		Ignore:         []Ignore{{Reason: "nothing"}, {Rule: "n+1"}, {Fingerprint: "xyz"}},
	}
	err := bad.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{
		"rules.n-plus-one.min_repeats", "rules.n-plus-one.max_gap", "rules.pool-saturation.utilization",
		"rules.seq-scan.max_selectivity", "rules.missing-index.min_cost_reduction", "rules.slow-query.severity",
		"rules.ignore[0]", `unknown rule "n+1"`, `fingerprint "xyz"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	var s Severity
	if _, err := toml.Decode(`s = "loud"`, &struct {
		S *Severity `toml:"s"`
	}{&s}); err == nil {
		t.Error("bad severity decoded")
	}
	var d struct {
		D Duration `toml:"d"`
	}
	if _, err := toml.Decode(`d = "soon"`, &d); err == nil {
		t.Error("bad duration decoded")
	}
	if _, err := toml.Decode(`d = 2`, &d); err != nil || time.Duration(d.D) != 2*time.Second {
		t.Errorf("integer seconds: %v %v", d.D, err)
	}
}

func TestSuppression(t *testing.T) {
	t.Parallel()
	f := Finding{ID: "seq-scan:00000000000000ab:public.audit_log", Rule: IDSeqScan, Fingerprint: "00000000000000ab", Table: "public.audit_log", Severity: Warning}
	tests := []struct {
		name   string
		ignore Ignore
		want   bool
	}{
		{"by rule", Ignore{Rule: IDSeqScan}, true},
		{"other rule", Ignore{Rule: IDNPlusOne}, false},
		{"by fingerprint", Ignore{Fingerprint: "ab"}, true},
		{"by fingerprint, case", Ignore{Fingerprint: "00000000000000AB"}, true},
		{"other fingerprint", Ignore{Fingerprint: "ac"}, false},
		{"by bare table", Ignore{Table: "audit_log"}, true},
		{"by qualified table", Ignore{Table: "public.audit_log"}, true},
		{"by quoted table", Ignore{Table: `"Audit_Log"`}, true},
		{"other schema", Ignore{Table: "archive.audit_log"}, false},
		{"rule and table", Ignore{Rule: IDSeqScan, Table: "audit_log"}, true},
		{"rule and other table", Ignore{Rule: IDSeqScan, Table: "books"}, false},
		{"by id", Ignore{ID: f.ID}, true},
		{"empty entry matches nothing", Ignore{Reason: "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Ignore: []Ignore{tt.ignore}}
			if _, got := c.Ignored(&f); got != tt.want {
				t.Errorf("Ignored = %v, want %v", got, tt.want)
			}
			g := f
			if got := c.Apply(&g); got == tt.want {
				t.Errorf("Apply = %v, want %v", got, !tt.want)
			}
		})
	}
	// A disabled rule and a severity override.
	off := false
	sev := Error
	c := Config{SeqScan: SeqScanConfig{Common: Common{Enabled: &off}}, MissingIndex: MissingIndexConfig{Common: Common{Severity: &sev}}}
	g := f
	if c.Apply(&g) {
		t.Error("disabled rule applied")
	}
	mi := Finding{Rule: IDMissingIndex, Severity: Info}
	if !c.Apply(&mi) || mi.Severity != Error {
		t.Errorf("override not applied: %v", mi.Severity)
	}
	// Without an override the evaluator's severity stays.
	mi = Finding{Rule: IDMissingIndex, Severity: Info}
	if !(Config{}).Apply(&mi) || mi.Severity != Info {
		t.Errorf("severity changed without an override: %v", mi.Severity)
	}
	// Inline directives.
	if !IgnoredInline([]string{"seq-scan", "n-plus-one"}, IDNPlusOne) || !IgnoredInline([]string{"*"}, IDSlowQuery) ||
		IgnoredInline([]string{"seq-scan"}, IDNPlusOne) || IgnoredInline(nil, IDNPlusOne) {
		t.Error("IgnoredInline")
	}
}
