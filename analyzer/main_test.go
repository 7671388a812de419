package analyzer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

var update = testutil.Update

func TestMain(m *testing.M) { testutil.Main(m) }

// golden compares got with testdata/name, or rewrites the file with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("update golden file: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test ./analyzer -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
