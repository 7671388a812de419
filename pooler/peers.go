package pooler

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pgaudit-proxy/pgaudit/wire"
)

// Peering, as PgBouncer's peer_id and [peers]: several pgaudit processes
// behind one address (so_reuseport or a TCP load balancer) each get a peer
// id, and a CancelRequest that reaches the wrong process is forwarded to
// the one whose id its key carries.
//
// The key layout is PgBouncer's (1.21 and later). Of the 8 bytes a client
// gets in BackendKeyData (4-byte PID, 4-byte secret):
//
//	byte 0     random, sign bit cleared (some clients want a positive PID)
//	byte 1     peer id, low byte
//	byte 2     peer id, high byte (peer ids are at most 16383)
//	byte 3..6  random
//	byte 7     random, except the low 2 bits: the forwarding TTL (3)
//
// 45 bits stay random. A process forwards a cancel for another peer's id
// with the TTL decremented and drops one whose TTL is 0, so a
// misconfigured ring cannot loop; it never forwards a cancel carrying its
// own id. With a peer id set, sessions in session mode too get a
// proxy-issued PID rather than their server's, as under PgBouncer.

// MaxPeerID is the highest peer_id, as in PgBouncer.
const MaxPeerID = 16383

// cancelTTLMask is the TTL's bits in the secret's last byte.
const cancelTTLMask = 0x03

// peerCancelDialTimeout bounds forwarding a cancel to a peer.
const peerCancelDialTimeout = 5 * time.Second

// maxCancelForwardsInFlight caps the CancelRequests this process forwards
// to peers at once. Each forward dials a peer and may wait up to
// peerCancelDialTimeout; without a cap, a flood of forged keys naming
// another peer id would become as many dials and goroutines held for
// seconds. A forward over the cap is dropped and counted as forward_failed,
// like one whose peer does not answer: a cancel is best effort, in
// Postgres too.
const maxCancelForwardsInFlight = 64

// ValidatePeers checks peer_id and the [peers] map.
func ValidatePeers(id int, peers map[int]string) error {
	if id < 0 || id > MaxPeerID {
		return fmt.Errorf("peer_id %d out of range: want 0 (off) or 1..%d", id, MaxPeerID)
	}
	if len(peers) > 0 && id == 0 {
		return fmt.Errorf("[peers] is set but peer_id is 0: give this process its own peer_id")
	}
	for pid, addr := range peers {
		if pid < 1 || pid > MaxPeerID {
			return fmt.Errorf("[peers] id %d out of range 1..%d", pid, MaxPeerID)
		}
		if strings.TrimSpace(addr) == "" {
			return fmt.Errorf("[peers] %d: empty address", pid)
		}
	}
	return nil
}

// newPeerCancelKey returns a proxy-issued (pid, secret) carrying peerID.
func newPeerCancelKey(peerID int) (uint32, []byte) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	b[0] &= 0x7f
	b[1] = byte(peerID)
	b[2] = byte(peerID >> 8)
	b[7] |= cancelTTLMask
	return binary.BigEndian.Uint32(b[:4]), b[4:8:8]
}

// cancelPeerOf returns the peer id a cancel key's PID carries.
func cancelPeerOf(pid uint32) int {
	return int(pid>>16&0xff) | int(pid>>8&0xff)<<8
}

// withoutTTL returns key with the TTL bits cleared: the form peered
// sessions are registered under, since forwarding changes the TTL.
func withoutTTL(key []byte) string {
	if len(key) != 4 {
		return string(key)
	}
	k := [4]byte(key)
	k[3] &^= cancelTTLMask
	return string(k[:])
}

// peerNetwork returns the network of a peer address: unix for a path.
func peerNetwork(addr string) string {
	if strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, "@") {
		return "unix"
	}
	return "tcp"
}

// forwardCancel sends a CancelRequest for (pid, key) to the peer at addr
// with its TTL decremented, then waits (bounded) for the peer to close the
// connection, so the client's own wait for the close still means the
// cancel was delivered. It returns false when the TTL is spent.
func forwardCancel(addr string, pid uint32, key []byte) (bool, error) {
	if len(key) != 4 || key[3]&cancelTTLMask == 0 {
		return false, nil
	}
	var msg [16]byte
	binary.BigEndian.PutUint32(msg[0:], 16)
	binary.BigEndian.PutUint32(msg[4:], 80877102)
	binary.BigEndian.PutUint32(msg[8:], pid)
	copy(msg[12:], key)
	msg[15]--
	c, err := net.DialTimeout(peerNetwork(addr), addr, peerCancelDialTimeout)
	if err != nil {
		return true, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(peerCancelDialTimeout))
	if _, err := c.Write(msg[:]); err != nil {
		return true, err
	}
	_, _ = io.Copy(io.Discard, c)
	return true, nil
}

// listenPeer opens the peer_listen address: this process's own address
// (tcp host:port or a unix socket path) that its peers forward cancels to,
// needed when the listen address is shared with so_reuseport.
//
// A unix socket file left behind by a process that did not close its
// listener (killed, crashed) is removed first when nothing accepts on it,
// so the restart of a slot (systemd's Restart=on-failure) does not fail
// with "address already in use"; one a live process serves is kept, and
// the listen then fails.
func listenPeer(addr string) (net.Listener, error) {
	if peerNetwork(addr) == "unix" && !strings.HasPrefix(addr, "@") {
		removeStaleSocket(addr)
	}
	l, err := net.Listen(peerNetwork(addr), addr)
	if err != nil {
		return nil, fmt.Errorf("peer_listen on %s: %w", addr, err)
	}
	return l, nil
}

// removeStaleSocket removes the unix socket at path when a connection to it
// is refused (no process listens there any more). Anything else at path
// (a regular file, a live socket, nothing) is left alone.
func removeStaleSocket(path string) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		_ = c.Close()
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		_ = os.Remove(path)
	}
}

// servePeers accepts forwarded cancels on the peer listener until it is
// closed. Only a plain 16-byte CancelRequest is read there; anything else
// is closed unanswered. Shutdown leaves it open, so cancels still reach
// the clients that are draining.
func (p *Proxy) servePeers(l net.Listener) {
	defer p.wg.Done()
	for {
		nc, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		p.mu.Lock()
		if p.closing {
			p.mu.Unlock()
			_ = nc.Close()
			return
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(peerCancelDialTimeout))
			var msg [16]byte
			if _, err := io.ReadFull(nc, msg[:]); err != nil {
				return
			}
			if binary.BigEndian.Uint32(msg[0:]) != 16 || binary.BigEndian.Uint32(msg[4:]) != 80877102 {
				p.log.Info().Str("peer", nc.RemoteAddr().String()).Msg("peer_listen: not a CancelRequest; closed")
				return
			}
			p.counters.cancels.fromPeers.Add(1)
			p.handleCancel(&wire.Startup{Kind: wire.CancelRequestKind, PID: binary.BigEndian.Uint32(msg[8:]), Key: bytes.Clone(msg[12:16])})
		}()
	}
}

// cancelCounters counts what became of CancelRequests (CancelCounts).
type cancelCounters struct {
	local, forwarded, forwardFailed, unknown, fromPeers atomic.Int64
	// forwarding is the number of forwards in flight (forwardToPeer).
	forwarding atomic.Int64
}

// CancelCounts says what became of the CancelRequests this process
// received since it started, from clients and from peers alike. Every
// request is counted once in exactly one of Local, Forwarded,
// ForwardFailed and Unknown; FromPeers counts, in addition, those that
// came in on peer_listen.
type CancelCounts struct {
	// Local: the key matched a session of this process (the cancel went
	// to its server if a statement was running).
	Local int64
	// Forwarded: the key carried another peer's id and was handed to
	// that peer.
	Forwarded int64
	// ForwardFailed: the key carried another peer's id, but the peer is
	// not in [peers], its address did not answer, the TTL was spent, or
	// maxCancelForwardsInFlight forwards were already under way.
	ForwardFailed int64
	// Unknown: the key matched nothing here and named no other peer.
	Unknown int64
	// FromPeers: requests that arrived on peer_listen, forwarded by a
	// peer.
	FromPeers int64
}

// CancelCounts returns the cancel counters; safe from any goroutine.
func (p *Proxy) CancelCounts() CancelCounts {
	c := &p.counters.cancels
	return CancelCounts{Local: c.local.Load(), Forwarded: c.forwarded.Load(),
		ForwardFailed: c.forwardFailed.Load(), Unknown: c.unknown.Load(), FromPeers: c.fromPeers.Load()}
}

// PeerAddr returns the peer listener's address, or nil without one.
func (p *Proxy) PeerAddr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peerListener == nil {
		return nil
	}
	return p.peerListener.Addr()
}

// forwardToPeer sends a CancelRequest for another peer's client to that
// peer, or drops it when the peer is unknown or its TTL is spent.
func (p *Proxy) forwardToPeer(cfg *Config, peer int, st *wire.Startup) {
	addr, ok := cfg.Peers[peer]
	if !ok {
		p.counters.cancels.forwardFailed.Add(1)
		p.log.Info().Uint32("pid", st.PID).Int("peer", peer).Msg("cancel request for an unknown peer ignored")
		return
	}
	if n := p.counters.cancels.forwarding.Add(1); n > maxCancelForwardsInFlight {
		p.counters.cancels.forwarding.Add(-1)
		p.counters.cancels.forwardFailed.Add(1)
		p.log.Debug().Int("peer", peer).Msg("cancel request not forwarded: too many forwards under way") // counted; a flood must not flood the log too
		return
	}
	sent, err := forwardCancel(addr, st.PID, st.Key)
	p.counters.cancels.forwarding.Add(-1)
	if sent && err == nil {
		p.counters.cancels.forwarded.Add(1)
	} else {
		p.counters.cancels.forwardFailed.Add(1)
	}
	switch {
	case !sent:
		p.log.Warn().Int("peer", peer).Msg("cancel request not forwarded: its TTL is spent (do peers forward to each other in a loop?)")
	case err != nil:
		p.log.Warn().Err(err).Int("peer", peer).Str("addr", addr).Msg("forwarding a cancel request to a peer failed")
	default:
		p.log.Debug().Int("peer", peer).Str("addr", addr).Msg("cancel request forwarded to its peer")
	}
}
