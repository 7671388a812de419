package wire

import "flag"

// update rewrites golden files under testdata/ instead of comparing with
// them: go test ./wire -run TestName -update
var update = flag.Bool("update", false, "rewrite golden files under testdata/")
