package querylog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// bufPool and entryPool recycle chunk buffers and parsed entries.
var bufPool, entryPool sync.Pool

// chunk is a run of whole records of one input, parsed by a worker and
// assembled in order.
type chunk struct {
	data  []byte
	line  int64 // line number of data[0]
	lines int64 // lines in data
	pos   int64 // raw input bytes read when the chunk was cut

	skipped string // a record too long to parse was skipped: why
	err     error  // a read error ends the input

	res chan []entry // the parsed entries; buffered, written once
}

// splitter cuts an input into chunks at record boundaries and hands them to
// the workers; order carries the chunks in input order to the assembler.
type splitter struct {
	format    Format
	r         io.Reader
	read      *atomic.Int64
	size      int
	maxRecord int
	bufs      *sync.Pool

	jobs  chan *chunk
	order chan *chunk
	done  <-chan struct{}
}

func (s *splitter) send(c *chunk) bool {
	c.res = make(chan []entry, 1)
	select {
	case s.order <- c:
	case <-s.done:
		return false
	}
	if c.data == nil {
		c.res <- nil
		return true
	}
	select {
	case s.jobs <- c:
		return true
	case <-s.done:
		c.res <- nil
		return false
	}
}

// getBuf returns an empty buffer with room for n bytes.
func (s *splitter) getBuf(n int) []byte {
	if b, ok := s.bufs.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, max(n, 2*s.size))
}

// run reads the input to its end.
func (s *splitter) run() {
	defer close(s.order)
	defer close(s.jobs)
	line := int64(1)
	buf := s.getBuf(s.size)
	from, q := 0, 0 // where the search for a boundary resumes; quote parity before it (csvlog)
	for {
		if cap(buf)-len(buf) < s.size {
			nb := make([]byte, len(buf), 2*cap(buf)+s.size)
			copy(nb, buf)
			buf = nb
		}
		n, err := io.ReadFull(s.r, buf[len(buf):len(buf)+s.size])
		buf = buf[:len(buf)+n]
		eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !eof {
			s.send(&chunk{line: line, err: err, pos: s.read.Load()})
			return
		}
		cut := len(buf)
		if !eof {
			var qEnd int
			cut, qEnd = boundary(s.format, buf, from, q)
			if cut < 0 {
				if len(buf) >= s.maxRecord {
					var ok bool
					if buf, line, ok = s.skip(buf, line, qEnd); !ok {
						return
					}
					from, q = 0, 0
					continue
				}
				from, q = len(buf), qEnd
				if s.format == FormatStderr && from > 0 {
					from-- // the last newline needs the byte after it
					q = 0
				}
				continue
			}
		}
		if cut > 0 {
			rest := buf[cut:]
			nb := s.getBuf(len(rest) + s.size)
			nb = append(nb, rest...)
			c := &chunk{data: buf[:cut], line: line, pos: s.read.Load()}
			c.lines = int64(bytes.Count(c.data, []byte{'\n'}))
			if c.data[len(c.data)-1] != '\n' {
				c.lines++
			}
			line += c.lines
			if !s.send(c) {
				return
			}
			buf = nb
		}
		from, q = 0, 0
		if eof {
			return
		}
	}
}

// boundary returns the end of the last whole record in buf (just after a
// newline), or -1, searching newlines at or after from. q is the parity of
// the double quotes in buf[:from]; qEnd is the parity over all of buf.
func boundary(f Format, buf []byte, from, q int) (cut, qEnd int) {
	switch f {
	case FormatCSV:
		// A newline ends a record when it is outside quotes: an even number
		// of quotes before it (a "" inside a field counts twice).
		qEnd = q ^ bytes.Count(buf[from:], []byte{'"'})&1
		p, end := qEnd, len(buf)
		for {
			i := bytes.LastIndexByte(buf[from:end], '\n')
			if i < 0 {
				return -1, qEnd
			}
			i += from
			p ^= bytes.Count(buf[i+1:end], []byte{'"'}) & 1
			if p == 0 {
				return i + 1, qEnd
			}
			end = i
		}
	case FormatStderr:
		// A newline ends an entry unless the next line starts with a tab.
		end := len(buf)
		for {
			i := bytes.LastIndexByte(buf[from:end], '\n')
			if i < 0 {
				return -1, 0
			}
			i += from
			if i+1 < len(buf) && buf[i+1] != '\t' {
				return i + 1, 0
			}
			end = i
		}
	default:
		i := bytes.LastIndexByte(buf[from:], '\n')
		if i < 0 {
			return -1, 0
		}
		return from + i + 1, 0
	}
}

// skip discards a record longer than maxRecord: it reports it as a chunk
// with no data and reads on to the next record boundary. It returns the
// buffer holding what follows the boundary.
func (s *splitter) skip(buf []byte, line int64, q int) ([]byte, int64, bool) {
	start := line
	// q is the quote parity at the end of buf. For the stderr format, a
	// newline at the end of buf needs the next byte.
	nl := buf[len(buf)-1] == '\n'
	line += int64(bytes.Count(buf, []byte{'\n'}))
	for {
		n, err := io.ReadFull(s.r, buf[:s.size])
		b := buf[:n]
		eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !eof {
			s.send(&chunk{line: start, skipped: fmt.Sprintf("record longer than %d bytes", s.maxRecord), pos: s.read.Load()})
			s.send(&chunk{line: line, err: err, pos: s.read.Load()})
			return nil, 0, false
		}
		cut := -1
		i := 0
		if s.format == FormatStderr && nl && len(b) > 0 && b[0] != '\t' {
			cut = 0
		}
		for cut < 0 {
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				q ^= bytes.Count(b[i:], []byte{'"'}) & 1
				break
			}
			j += i
			switch s.format {
			case FormatCSV:
				q ^= bytes.Count(b[i:j], []byte{'"'}) & 1
				if q == 0 {
					cut = j + 1
				}
			case FormatStderr:
				if j+1 < len(b) && b[j+1] != '\t' {
					cut = j + 1
				}
			default:
				cut = j + 1
			}
			i = j + 1
		}
		if cut < 0 {
			line += int64(bytes.Count(b, []byte{'\n'}))
			nl = len(b) > 0 && b[len(b)-1] == '\n'
			if eof {
				cut = len(b)
			} else {
				continue
			}
		} else {
			line += int64(bytes.Count(b[:cut], []byte{'\n'}))
		}
		c := &chunk{line: start, lines: line - start, skipped: fmt.Sprintf("record longer than %d bytes", s.maxRecord), pos: s.read.Load()}
		if !s.send(c) {
			return nil, 0, false
		}
		rest := b[cut:]
		nb := s.getBuf(len(rest) + s.size)
		nb = append(nb, rest...)
		return nb, line, true
	}
}

// parseWorkers runs n workers over jobs until it is closed.
func parseWorkers(n int, jobs <-chan *chunk, mk func() *worker, bufs *sync.Pool, entries *sync.Pool, wg *sync.WaitGroup) {
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := mk()
			for c := range jobs {
				var out []entry
				if p, ok := entries.Get().(*[]entry); ok {
					out = (*p)[:0]
				} else {
					out = make([]entry, 0, len(c.data)/128+16)
				}
				out = w.parse(c.data, c.line, out)
				data := c.data
				c.data = nil
				if cap(data) <= 8<<20 {
					bufs.Put(&data)
				}
				c.res <- out
			}
		}()
	}
}

// runPipeline parses one input with workers and assembles its entries in
// order on the calling goroutine.
func (r *reader) runPipeline(ctx context.Context, in *openInput, format Format, prefix *Prefix) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	sp := &splitter{
		format: format, r: in.r, read: &in.read, size: r.opts.ChunkSize, maxRecord: r.opts.MaxRecordBytes,
		bufs: &bufPool, jobs: make(chan *chunk, r.opts.Workers), order: make(chan *chunk, 2*r.opts.Workers), done: done,
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		sp.run()
	}()
	parseWorkers(r.opts.Workers, sp.jobs, func() *worker { return newWorker(format, prefix, &r.opts) }, &bufPool, &entryPool, &wg)
	stop := func() {
		close(done)
		in.close() // unblocks a read in progress
		for c := range sp.order {
			<-c.res
		}
		wg.Wait()
	}
	var lines int64
	for c := range sp.order {
		if err := ctx.Err(); err != nil {
			<-c.res
			stop()
			return err
		}
		ents := <-c.res
		if c.err != nil {
			stop()
			return fmt.Errorf("read %s: %w", in.name, c.err)
		}
		if c.skipped != "" {
			r.asm.malformed(c.line, c.skipped)
		}
		for i := range ents {
			r.asm.entry(&ents[i])
		}
		clear(ents)
		ents = ents[:0]
		entryPool.Put(&ents)
		lines += c.lines
		r.sum.Lines += c.lines
		r.progress(c.pos)
	}
	wg.Wait()
	in.fs.Lines = lines
	return nil
}
