package analyzer

import (
	"testing"

	"github.com/pgaudit-proxy/pgaudit/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }
