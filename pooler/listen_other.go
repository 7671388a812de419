//go:build !linux

package pooler

import "syscall"

// inheritSockopts reports false: outside Linux, accepted connections keep
// Go's own per-connection TCP_NODELAY and keep-alive setup.
func inheritSockopts(syscall.RawConn) bool { return false }

// inheritSockoptsSupported says whether Listen tries inheritSockopts.
const inheritSockoptsSupported = false
