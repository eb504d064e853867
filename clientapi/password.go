package clientapi

import (
	"crypto/sha256"
	"encoding/base64"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// bcryptCost is the work factor for new password hashes.
const bcryptCost = bcrypt.DefaultCost

// bcryptInput maps a password to what bcrypt hashes. bcrypt reads at most
// 72 bytes; rather than silently truncating (two long passphrases with the
// same first 72 bytes would match each other), longer passwords are first
// reduced to their SHA-256 in base64 (44 bytes).
func bcryptInput(password string) []byte {
	if len(password) <= 72 {
		return []byte(password)
	}
	sum := sha256.Sum256([]byte(password))
	return []byte(base64.StdEncoding.EncodeToString(sum[:]))
}

// hashPassword returns the bcrypt hash stored for password.
func hashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword(bcryptInput(password), bcryptCost)
	return string(h), err
}

var (
	dummyHashOnce sync.Once
	dummyHash     []byte
)

// checkPassword reports whether password matches hash. When hash is empty
// (no such user, or an account without a password) it still spends one
// bcrypt comparison, so the response time does not reveal which accounts
// exist. bcrypt compares in constant time.
func checkPassword(hash, password string) bool {
	if hash == "" {
		dummyHashOnce.Do(func() {
			dummyHash, _ = bcrypt.GenerateFromPassword([]byte("myelin-dummy-password"), bcryptCost)
		})
		_ = bcrypt.CompareHashAndPassword(dummyHash, bcryptInput(password))
		return false
	}
	return bcrypt.CompareHashAndPassword([]byte(hash), bcryptInput(password)) == nil
}
