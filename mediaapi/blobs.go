package mediaapi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// blobStore keeps file bytes on disk named by their SHA-256:
// <root>/<h[0:2]>/<h[2:4]>/<h>. Writes go through <root>/tmp.
//
// A hash is only ever built from hex digits we computed, so no request
// data becomes part of a path.
type blobStore struct {
	root string // immutable
}

// errTooLarge is returned by put when the stream passes its limit.
var errTooLarge = errors.New("media: content over the size limit")

func newBlobStore(root string) (*blobStore, error) {
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("media store %s: %w", root, err)
	}
	return &blobStore{root: root}, nil
}

func (b *blobStore) path(sha string) string {
	return filepath.Join(b.root, sha[0:2], sha[2:4], sha)
}

// put streams r into the store, at most limit bytes; a longer stream
// returns errTooLarge (or the *http.MaxBytesError a body limit raised,
// mapped the same way) and leaves nothing behind. The file is fsynced and
// renamed into place before put returns, so a database row naming the
// hash may be committed afterwards.
func (b *blobStore) put(r io.Reader, limit int64) (sha string, size int64, err error) {
	tmp, err := os.CreateTemp(filepath.Join(b.root, "tmp"), "upload-*")
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	size, err = io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, limit+1))
	if err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return "", 0, errTooLarge
		}
		return "", 0, err
	}
	if size > limit {
		return "", 0, errTooLarge
	}
	if err = tmp.Sync(); err != nil {
		return "", 0, err
	}
	if err = tmp.Close(); err != nil {
		return "", 0, err
	}
	sha = hex.EncodeToString(h.Sum(nil))
	final := b.path(sha)
	if _, statErr := os.Stat(final); statErr == nil {
		// Same bytes already stored: keep one copy. Touch it so the
		// orphan sweep, which spares recent files, cannot remove it
		// before our row commits.
		os.Remove(tmp.Name())
		now := time.Now()
		_ = os.Chtimes(final, now, now)
		return sha, size, nil
	}
	if err = os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return "", 0, err
	}
	if err = os.Rename(tmp.Name(), final); err != nil {
		return "", 0, err
	}
	syncDir(filepath.Dir(final))
	return sha, size, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// open opens the file for sha.
func (b *blobStore) open(sha string) (*os.File, error) {
	f, err := os.Open(b.path(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, mxerr.Wrap(err, mxerr.NotFound, "media content is missing")
	}
	return f, err
}

// exists reports whether the file for sha is stored.
func (b *blobStore) exists(sha string) bool {
	_, err := os.Stat(b.path(sha))
	return err == nil
}

// remove deletes the file for sha if it was not touched since before.
func (b *blobStore) remove(sha string, before time.Time) error {
	p := b.path(sha)
	info, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.ModTime().After(before) {
		return nil
	}
	return os.Remove(p)
}

// sweepTemp removes temporary files not modified since before: uploads a
// crash or kill interrupted. (Interrupted requests remove their own.)
// Recent files are spared: another process sharing the store in split
// mode may still be writing them.
func (b *blobStore) sweepTemp(before time.Time) (removed int, err error) {
	dir := filepath.Join(b.root, "tmp")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || info.ModTime().After(before) {
			continue
		}
		if os.Remove(filepath.Join(dir, e.Name())) == nil {
			removed++
		}
	}
	return removed, nil
}
