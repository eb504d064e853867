//go:build !unix

package clientapi

import "os"

// markFile reads the revocation mark (tokencache.go) with os.ReadFile on
// every check; revocationmark_unix.go keeps a descriptor open instead.
type markFile struct {
	path string // immutable
}

func openMarkFile(path string) (*markFile, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	return &markFile{path: path}, nil
}

// read puts the mark's current content in buf and returns its length, or
// -1 when it cannot be read or does not fit.
func (m *markFile) read(buf []byte) int {
	b, err := os.ReadFile(m.path)
	if err != nil || len(b) >= len(buf) {
		return -1
	}
	return copy(buf, b)
}
