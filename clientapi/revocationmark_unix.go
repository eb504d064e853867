//go:build unix

package clientapi

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// markFile reads the revocation mark (tokencache.go) through a file
// descriptor kept open, so that a check is two system calls and no
// allocation: fstat (is the file still the one at the path?) and pread
// (its content). os.ReadFile costs an open, a stat, two reads, a close
// and the allocations of an *os.File and the content.
//
// The writers rewrite the file in place (os.WriteFile truncates and
// writes the same inode), which the open descriptor sees at once. A file
// deleted or renamed over by hand leaves the descriptor on an unlinked
// inode: fstat's link count is then 0, and the path is opened again.
//
// Concurrency: fd is read atomically; mu serializes reopening.
type markFile struct {
	path string // immutable
	fd   atomic.Int64
	mu   sync.Mutex
}

// openMarkFile opens the mark at path, creating it empty if there is
// none (so that the server holds a descriptor from the start; "" is a
// mark like any other).
func openMarkFile(path string) (*markFile, error) {
	m := &markFile{path: path}
	fd, err := openMarkFD(path)
	if err != nil {
		return nil, err
	}
	m.fd.Store(int64(fd))
	return m, nil
}

func openMarkFD(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_CLOEXEC, 0o600)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// read puts the mark's current content in buf and returns its length, or
// -1 when it cannot be read or does not fit (no entry is then served or
// kept).
func (m *markFile) read(buf []byte) int {
	fd := int(m.fd.Load())
	var st syscall.Stat_t
	if fd < 0 || syscall.Fstat(fd, &st) != nil || st.Nlink == 0 {
		if fd = m.reopen(fd); fd < 0 {
			return -1
		}
	}
	n, err := syscall.Pread(fd, buf, 0)
	if err != nil || n >= len(buf) {
		return -1
	}
	return n
}

// reopen replaces the descriptor old (unlinked, or -1) with a new one on
// the path, and returns it (-1 if the path cannot be opened). The old
// descriptor is closed a while later, not at once: another check may
// still be reading through it (and a reused descriptor number must not
// hand it another file).
func (m *markFile) reopen(old int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur := int(m.fd.Load()); cur != old {
		return cur // another check reopened it already
	}
	fd, err := openMarkFD(m.path)
	if err != nil {
		fd = -1
	}
	m.fd.Store(int64(fd))
	if old >= 0 {
		time.AfterFunc(time.Minute, func() { syscall.Close(old) })
	}
	return fd
}
