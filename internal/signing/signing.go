// Package signing holds the server's Ed25519 signing key: loading it,
// creating it on first start, and the key ID other servers know it by.
//
// The file format is the one Synapse and Dendrite also read
// ("ed25519 <key_id_suffix> <unpadded base64 seed>"), so admins can move
// keys between servers.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Key is the server's signing key. Immutable once loaded.
type Key struct {
	// ID is the full key ID, e.g. "ed25519:a_Xy12".
	ID         string
	PrivateKey ed25519.PrivateKey
}

// Public returns the public half.
func (k *Key) Public() ed25519.PublicKey { return k.PrivateKey.Public().(ed25519.PublicKey) }

// PublicBase64 is the public key in unpadded standard base64, as the spec
// writes keys.
func (k *Key) PublicBase64() string {
	return base64.RawStdEncoding.EncodeToString(k.Public())
}

// LoadOrCreate reads the key at path, creating a new one (and its
// directory) if the file does not exist. created reports which happened.
func LoadOrCreate(path string) (key *Key, created bool, err error) {
	key, err = Load(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	key, err = Generate()
	if err != nil {
		return nil, false, err
	}
	if err := key.Save(path); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// Generate makes a new key with a random key ID.
func Generate() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	var idBytes [4]byte
	if _, err := rand.Read(idBytes[:]); err != nil {
		return nil, err
	}
	suffix := "a_" + strings.NewReplacer("+", "", "/", "").Replace(base64.RawStdEncoding.EncodeToString(idBytes[:]))
	return &Key{ID: "ed25519:" + suffix, PrivateKey: priv}, nil
}

// Load reads a key file.
func Load(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 3 || fields[0] != "ed25519" {
		return nil, fmt.Errorf("signing key %s: want one line \"ed25519 <id> <base64 seed>\"", path)
	}
	seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(fields[2], "="))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("signing key %s: the seed is not %d bytes of base64", path, ed25519.SeedSize)
	}
	return &Key{ID: "ed25519:" + fields[1], PrivateKey: ed25519.NewKeyFromSeed(seed)}, nil
}

// Save writes the key file with owner-only permissions, atomically.
func (k *Key) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	suffix := strings.TrimPrefix(k.ID, "ed25519:")
	line := fmt.Sprintf("ed25519 %s %s\n", suffix, base64.RawStdEncoding.EncodeToString(k.PrivateKey.Seed()))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
