package testpeers

import (
	"bytes"
	"strings"
	"sync"
)

// OutputWatcher is a child process's stdout or stderr: it keeps everything
// written (String, for failure messages) and delivers on Found the rest of
// the first line that starts with its prefix, such as the address a child
// prints once it listens.
type OutputWatcher struct {
	prefix string
	found  chan string

	mu   sync.Mutex
	buf  bytes.Buffer
	line []byte // the unfinished last line
	sent bool
}

// NewOutputWatcher returns a watcher for lines starting with prefix.
func NewOutputWatcher(prefix string) *OutputWatcher {
	return &OutputWatcher{prefix: prefix, found: make(chan string, 1)}
}

// Found delivers the rest of the first line with the prefix, once.
func (w *OutputWatcher) Found() <-chan string { return w.found }

// Write implements io.Writer.
func (w *OutputWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.sent {
		return len(p), nil
	}
	w.line = append(w.line, p...)
	for {
		i := bytes.IndexByte(w.line, '\n')
		if i < 0 {
			break
		}
		l := strings.TrimSpace(string(w.line[:i]))
		w.line = w.line[i+1:]
		if rest, ok := strings.CutPrefix(l, w.prefix); ok {
			w.found <- rest
			w.sent, w.line = true, nil
			break
		}
	}
	return len(p), nil
}

// String returns everything written so far.
func (w *OutputWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
