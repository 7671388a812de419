package wire

import "github.com/pgaudit-proxy/pgaudit/internal/testutil"

// update rewrites golden files under testdata/ instead of comparing with
// them: go test ./wire -run TestName -update
var update = testutil.Update
