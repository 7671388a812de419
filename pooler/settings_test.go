package pooler

import (
	"testing"
	"unsafe"
)

// TestGucsKeyInterned: equal settings built separately give one key
// string (applySettings then compares pointers), different settings
// different keys, and no settings the empty key.
func TestGucsKeyInterned(t *testing.T) {
	a := gucsKey(map[string]string{"search_path": "a", "DateStyle": "ISO"})
	b := gucsKey(map[string]string{"DateStyle": "ISO", "search_path": "a"})
	c := gucsKey(map[string]string{"DateStyle": "ISO", "search_path": "b"})
	if a != b || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Errorf("equal settings: keys %q and %q are not one string", a, b)
	}
	if a == c {
		t.Errorf("different settings share the key %q", a)
	}
	if k := gucsKey(nil); k != "" {
		t.Errorf("gucsKey(nil) = %q, want empty", k)
	}
}
