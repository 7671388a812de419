package pooler

import "hash/maphash"

// Result hashing for the cache-candidate rule. A statement's first DataRow
// decides, at random, whether its result is hashed (about one statement in
// Config.ResultSampleEvery); the rows of a sampled one go through maphash
// keyed with the proxy's seed. Statements not sampled cost one branch per
// row and one xorshift step per statement.
const (
	resUndecided uint8 = iota
	resSampling
	resSkipping
)

// hashRowLocked feeds one DataRow body to the result hash, deciding first
// whether the statement is sampled.
// The skipping case is small enough to inline into the relay.
func (s *Session) hashRowLocked(body []byte) {
	if s.resState != resSkipping {
		s.hashRowSlowLocked(body)
	}
}

func (s *Session) hashRowSlowLocked(body []byte) {
	switch s.resState {
	case resUndecided:
		every := s.proxy.config().ResultSampleEvery
		if every == 0 {
			every = DefaultResultSampleEvery
		}
		if every < 0 {
			s.resState = resSkipping
			return
		}
		if s.resRand == 0 {
			s.resRand = s.id*0x9e3779b97f4a7c15 | 1
		}
		s.resRand ^= s.resRand << 13
		s.resRand ^= s.resRand >> 7
		s.resRand ^= s.resRand << 17
		if every > 1 && s.resRand%uint64(every) != 0 {
			s.resState = resSkipping
			return
		}
		s.resState = resSampling
		if s.resHash == nil {
			s.resHash = new(maphash.Hash)
			s.resHash.SetSeed(s.proxy.resultSeed)
		} else {
			s.resHash.Reset()
		}
	}
	s.resHash.Write(body)
}

// endResultLocked ends the current statement's result: it returns its
// hash when it was sampled (never zero), else zero, and resets the state
// for the next statement.
func (s *Session) endResultLocked() uint64 {
	var h uint64
	if s.resState == resSampling {
		h = s.resHash.Sum64() | 1
	}
	s.resState = resUndecided
	return h
}
