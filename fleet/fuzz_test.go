package fleet

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzDecodeExport feeds arbitrary bytes to what a peer's answer goes
// through (decode, Check, Merge, View): it must return an error or a view,
// never panic, and a document it accepts must encode and decode to one it
// accepts again.
func FuzzDecodeExport(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "export.golden.json")); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"version":1,"shapes":[{"fingerprint":"00000000000000ff","calls":2,"latency":{"mapping":"logarithmic","unit":"us","gamma":1.02020202020202,"count":2,"zero_count":0,"positive_bins":{"-2147483648":1,"2147483647":1}}}]}`))
	f.Add([]byte(`{"version":1,"findings":[{"id":"x","count":1},{"id":"x","count":-5}],"pools":[{"database":"a","wait_hist":[1,2]},{"database":"a","wait_hist":[1,2,3,4]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Document
		if err := json.Unmarshal(b, &d); err != nil {
			return
		}
		m, err := Merge([]Source{{Name: "a", Doc: &d}, {Name: "b", Doc: &d}})
		if err != nil {
			return
		}
		_ = m.View(10, time.Time{})
		out, err := json.Marshal(&d)
		if err != nil {
			t.Fatalf("encode accepted document: %v", err)
		}
		var again Document
		if err := json.Unmarshal(out, &again); err != nil {
			t.Fatalf("decode re-encoded document: %v\n%s", err, out)
		}
		if err := again.Check(); err != nil {
			t.Fatalf("re-encoded document refused: %v\n%s", err, out)
		}
	})
}
