// Package edsign signs with an Ed25519 key using nonces computed ahead of
// time, so that the costly part of a signature — the fixed-base scalar
// multiplication R = r·B and R's encoding, ~12 µs of the ~17 µs of
// crypto/ed25519.Sign on this machine (BenchmarkSign) — is not paid by
// the request that signs, which is left ~1.2 µs: a hash and a scalar
// multiply-add.
//
// RFC 8032 §5.1.6 derives the nonce from the key's prefix and the
// message, r = SHA-512(prefix ‖ M) mod L, so that a signer without a good
// random source never reuses r for two messages (reuse, or any bias,
// leaks the secret scalar). The derivation is invisible to a verifier:
// §5.1.7 checks [S]B = R + [k]A with k = SHA-512(R ‖ A ‖ M) for whatever
// R the signature carries, and a signature (R, S = r + k·a mod L) made
// with r drawn uniformly at random and used once is as strong — the
// "randomised" signing of the Schnorr scheme Ed25519 instantiates. This
// package draws r from 64 bytes of crypto/rand reduced mod L (bias below
// 2^-256), hands each r out exactly once (popped under a lock; the pool's
// slot and the signer's copy are zeroed after use, as far as Go lets a
// program clear memory), and derives a and A from the seed as §5.1.5
// says. Matrix does not need deterministic signatures: an event's ID and
// content hash are computed without its "signatures" (server-server-api,
// "Signing Events" and "Calculating the reference hash for an event"),
// so two signatures of the same event would differ only there.
//
// The one risk this adds to RFC 8032's signing: a nonce exists before
// the message it signs, so if the process's memory is copied and both
// copies run on (a virtual machine restored twice from one snapshot, a
// cloned VM, a process restored by CRIU), both copies sign their own next
// messages with the same pooled r, and two signatures (R, S1), (R, S2) of
// different messages give a = (S1 - S2)/(k1 - k2) mod L: the key. No
// check inside the process can see such a copy happen, so the pool is
// opt-in (config room_server.precomputed_signature_nonces, default off);
// NewDirect makes a Signer that signs every message with ed25519.Sign.
//
// The pool is fixed in size. When it runs below half, one goroutine
// refills it to full, one nonce per turn with a yield between, so that
// request goroutines waiting to run go first; when it is empty a
// signature is made as crypto/ed25519.Sign makes it, never waiting.
package edsign

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"

	"filippo.io/edwards25519"
)

// DefaultPoolSize is the number of nonces a Signer keeps: 8 KiB (64 bytes
// each), about 40 ms of messages at 3,000 a second, refilled in bursts
// of half.
const DefaultPoolSize = 128

// nonce is a secret r, used for one signature, and its public R = r·B.
type nonce struct {
	r edwards25519.Scalar
	R [32]byte
}

// Signer signs with one Ed25519 key. It is safe for concurrent use.
type Signer struct {
	key    ed25519.PrivateKey  // immutable; signs when the pool is empty
	public [32]byte            // immutable; A, as the key carries it
	secret edwards25519.Scalar // immutable; a, from the seed (RFC 8032 §5.1.5)

	mu        sync.Mutex
	pool      []nonce // guarded by mu; fixed capacity, len(pool) ready to use
	refilling bool    // guarded by mu; a refill goroutine is running

	pooled, direct atomic.Uint64 // signatures made from the pool, by ed25519.Sign
}

// New returns a Signer for key with room for size nonces (DefaultPoolSize
// when size ≤ 0) and starts filling its pool. key's public half must be
// the one its seed derives.
func New(key ed25519.PrivateKey, size int) (*Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("edsign: the private key is not 64 bytes")
	}
	if size <= 0 {
		size = DefaultPoolSize
	}
	s := &Signer{key: key, pool: make([]nonce, 0, size)}
	// RFC 8032 §5.1.5: the first half of SHA-512(seed), clamped, is the
	// secret scalar a; A = a·B.
	h := sha512.Sum512(key.Seed())
	if _, err := s.secret.SetBytesWithClamping(h[:32]); err != nil {
		return nil, err
	}
	clear(h[:])
	copy(s.public[:], key[32:])
	if a := new(edwards25519.Point).ScalarBaseMult(&s.secret).Bytes(); string(a) != string(s.public[:]) {
		return nil, errors.New("edsign: the private key's public half is not its seed's")
	}
	s.mu.Lock()
	s.startRefill()
	s.mu.Unlock()
	return s, nil
}

// NewDirect returns a Signer without a pool: every signature is
// crypto/ed25519.Sign's (RFC 8032's nonce, derived from the key and the
// message). key's public half must be the one its seed derives.
func NewDirect(key ed25519.PrivateKey) (*Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("edsign: the private key is not 64 bytes")
	}
	if !ed25519.NewKeyFromSeed(key.Seed()).Equal(key) {
		return nil, errors.New("edsign: the private key's public half is not its seed's")
	}
	return &Signer{key: key}, nil // cap(pool) == 0: Sign never refills
}

// Sign returns the Ed25519 signature of message, which
// crypto/ed25519.Verify accepts with the key's public half: made with a
// nonce from the pool, or by ed25519.Sign when the pool is empty.
func (s *Signer) Sign(message []byte) []byte {
	var n nonce
	have := false
	s.mu.Lock()
	if last := len(s.pool) - 1; last >= 0 {
		n, have = s.pool[last], true
		s.pool[last] = nonce{}
		s.pool = s.pool[:last]
	}
	if len(s.pool) < cap(s.pool)/2 {
		s.startRefill()
	}
	s.mu.Unlock()
	if !have {
		s.direct.Add(1)
		return ed25519.Sign(s.key, message)
	}
	s.pooled.Add(1)
	sig := signWith(&n, &s.public, &s.secret, message)
	n = nonce{}
	return sig
}

// signWith is RFC 8032 §5.1.6 from step 3 on, with n's r and R:
// k = SHA-512(R ‖ A ‖ M) mod L, S = r + k·a mod L; the signature is R ‖ S.
func signWith(n *nonce, public *[32]byte, secret *edwards25519.Scalar, message []byte) []byte {
	h := sha512.New()
	h.Write(n.R[:])
	h.Write(public[:])
	h.Write(message)
	var digest [sha512.Size]byte
	k, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic("edsign: " + err.Error()) // SHA-512 gives 64 bytes, all SetUniformBytes asks
	}
	S := new(edwards25519.Scalar).MultiplyAdd(k, secret, &n.r)
	sig := make([]byte, 0, ed25519.SignatureSize)
	sig = append(sig, n.R[:]...)
	return append(sig, S.Bytes()...)
}

// newNonce draws r uniformly mod L from 64 random bytes and computes R.
func newNonce(n *nonce) {
	var seed [64]byte
	rand.Read(seed[:]) // never fails (crypto/rand, Go ≥ 1.24)
	if _, err := n.r.SetUniformBytes(seed[:]); err != nil {
		panic("edsign: " + err.Error()) // 64 bytes, all SetUniformBytes asks
	}
	clear(seed[:])
	copy(n.R[:], new(edwards25519.Point).ScalarBaseMult(&n.r).Bytes())
}

// startRefill starts the refill goroutine unless one runs. Called with
// s.mu held.
func (s *Signer) startRefill() {
	if !s.refilling {
		s.refilling = true
		go s.refill()
	}
}

// refill fills the pool to full, one nonce per turn, yielding between
// turns so that goroutines waiting to run (requests) are not held up by
// more than one nonce's computation; the work lands mostly when the
// process would otherwise wait (on a COMMIT's fsync).
func (s *Signer) refill() {
	for !s.addOne(true) {
		runtime.Gosched()
	}
}

// addOne computes one nonce and adds it to the pool unless the pool is
// full by then, and reports whether it is full now. fromRefill: the
// caller is the refill goroutine, whose end (s.refilling) it records
// under the same lock once the pool is full.
func (s *Signer) addOne(fromRefill bool) bool {
	var n nonce
	newNonce(&n)
	s.mu.Lock()
	if len(s.pool) < cap(s.pool) {
		s.pool = append(s.pool, n)
	}
	full := len(s.pool) == cap(s.pool)
	if full && fromRefill {
		s.refilling = false
	}
	s.mu.Unlock()
	n = nonce{}
	return full
}

// Fill fills the pool to full in the caller's goroutine: for a caller
// (a test) that needs the next signatures to come from the pool.
func (s *Signer) Fill() {
	for !s.addOne(false) {
	}
}

// Counts returns how many signatures were made with a pooled nonce and
// how many by ed25519.Sign because the pool was empty.
func (s *Signer) Counts() (pooled, direct uint64) {
	return s.pooled.Load(), s.direct.Load()
}
