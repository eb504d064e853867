package edsign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"filippo.io/edwards25519"
)

// newFilled returns a Signer for a fresh key whose pool is full.
func newFilled(t testing.TB, size int) (*Signer, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(priv, size)
	if err != nil {
		t.Fatal(err)
	}
	waitFull(t, s)
	return s, pub
}

// waitFull waits until the refill goroutine has filled s's pool.
func waitFull(t testing.TB, s *Signer) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		full, refilling := len(s.pool) == cap(s.pool), s.refilling
		s.mu.Unlock()
		if full && !refilling {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the pool did not fill")
		}
	}
}

// TestSignVerifies signs random messages of lengths up to 1,000 bytes
// with many keys (1,040 keys, 8,000 signatures), each from the pool:
// every signature verifies with crypto/ed25519.Verify, fails for a
// changed message or another key, and is not ed25519.Sign's (whose
// deterministic r the pool does not use).
func TestSignVerifies(t *testing.T) {
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	otherPub := other.Public().(ed25519.PublicKey)
	signed := 0
	for _, c := range []struct{ keys, perKey, pool int }{
		{40, 100, 128}, // a pool used down below half, refilling meanwhile
		{1000, 4, 8},   // many keys
	} {
		for key := range c.keys {
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(priv, c.pool)
			if err != nil {
				t.Fatal(err)
			}
			s.Fill() // perKey < pool: every signature below is a pooled one
			for i := range c.perKey {
				msg := make([]byte, (key*c.perKey+i)%1001)
				rand.Read(msg)
				sig := s.Sign(msg)
				if !ed25519.Verify(pub, msg, sig) {
					t.Fatalf("key %d message %d (%d bytes): the signature does not verify", key, i, len(msg))
				}
				if bytes.Equal(sig, ed25519.Sign(priv, msg)) {
					t.Fatalf("key %d message %d: the deterministic signature, not a pooled nonce's", key, i)
				}
				if ed25519.Verify(otherPub, msg, sig) {
					t.Fatalf("key %d message %d: verifies with another key", key, i)
				}
				if len(msg) > 0 {
					msg[len(msg)/2] ^= 1
					if ed25519.Verify(pub, msg, sig) {
						t.Fatalf("key %d message %d: verifies for a changed message", key, i)
					}
				}
				signed++
			}
			if pooled, direct := s.Counts(); pooled != uint64(c.perKey) || direct != 0 {
				t.Fatalf("key %d: %d pooled and %d direct signatures, want %d and 0", key, pooled, direct, c.perKey)
			}
		}
	}
	if signed != 8000 {
		t.Fatalf("signed %d", signed)
	}
}

// TestNonceUsedOnce signs from many goroutines at once: every signature
// verifies and no two carry the same R (a nonce used twice would).
func TestNonceUsedOnce(t *testing.T) {
	s, pub := newFilled(t, 256)
	const workers, each = 8, 250
	sigs := make([][]byte, workers*each)
	msgs := make([][]byte, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				j := w*each + i
				msgs[j] = fmt.Appendf(nil, "message %d", j)
				sigs[j] = s.Sign(msgs[j])
			}
		})
	}
	wg.Wait()
	seen := make(map[string]int, len(sigs))
	for j, sig := range sigs {
		if !ed25519.Verify(pub, msgs[j], sig) {
			t.Fatalf("signature %d does not verify", j)
		}
		R := string(sig[:32])
		if k, ok := seen[R]; ok {
			t.Fatalf("signatures %d and %d share R", k, j)
		}
		seen[R] = j
	}
	if pooled, _ := s.Counts(); pooled < 128 {
		t.Fatalf("only %d pooled signatures", pooled)
	}
}

// TestPoolSlotZeroed checks that a nonce handed out leaves no copy of r
// in the pool's array.
func TestPoolSlotZeroed(t *testing.T) {
	s, _ := newFilled(t, 8)
	s.mu.Lock()
	backing := s.pool[:cap(s.pool)]
	s.mu.Unlock()
	for range 3 {
		s.Sign([]byte("m"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// 5 of 8 left is not below half: no refill has put nonces back.
	if len(s.pool) != 5 || s.refilling {
		t.Fatalf("%d nonces left (refilling %v), want 5", len(s.pool), s.refilling)
	}
	for i := len(s.pool); i < cap(s.pool); i++ {
		if backing[i] != (nonce{}) {
			t.Fatalf("slot %d still holds a nonce", i)
		}
	}
}

// TestEmptyPoolSignsDirectly: with no nonce ready the signature is
// exactly ed25519.Sign's, and signing starts a refill.
func TestEmptyPoolSignsDirectly(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := New(priv, 4)
	if err != nil {
		t.Fatal(err)
	}
	waitFull(t, s)
	s.mu.Lock()
	for i := range s.pool {
		s.pool[i] = nonce{}
	}
	s.pool = s.pool[:0]
	s.refilling = true // hold the refill off while the pool is empty
	s.mu.Unlock()
	msg := []byte("no nonce ready")
	if sig := s.Sign(msg); !bytes.Equal(sig, ed25519.Sign(priv, msg)) {
		t.Fatal("an empty pool's signature is not ed25519.Sign's")
	}
	if pooled, direct := s.Counts(); pooled != 0 || direct != 1 {
		t.Fatalf("%d pooled, %d direct; want 0 and 1", pooled, direct)
	}
	s.mu.Lock()
	s.refilling = false
	s.mu.Unlock()
	s.Sign(msg) // below half: starts the refill
	waitFull(t, s)
}

// TestNewRefusesMismatchedKey: a private key whose public half is not
// its seed's would make signatures nobody can verify.
func TestNewRefusesMismatchedKey(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	bad := append(ed25519.PrivateKey{}, priv[:32]...)
	bad = append(bad, other[32:]...)
	if _, err := New(bad, 4); err == nil {
		t.Fatal("New accepted a key whose public half is another's")
	}
	if _, err := New(priv[:63], 4); err == nil {
		t.Fatal("New accepted a 63-byte key")
	}
}

// BenchmarkSign compares ed25519.Sign with the request's share of a
// pooled signature — the arithmetic alone (pooled) and Sign with its
// lock and pop (Sign-from-full-pool) — and with the refill's cost per
// nonce (refill-one), which runs outside requests.
func BenchmarkSign(b *testing.B) {
	msg := bytes.Repeat([]byte("x"), 700) // about a message event's redacted JSON
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	b.Run("ed25519.Sign", func(b *testing.B) {
		for b.Loop() {
			ed25519.Sign(priv, msg)
		}
	})
	b.Run("pooled", func(b *testing.B) {
		s, err := New(priv, 1)
		if err != nil {
			b.Fatal(err)
		}
		n := make([]nonce, 1)
		newNonce(&n[0])
		for b.Loop() {
			signWith(&n[0], &s.public, &s.secret, msg)
		}
	})
	b.Run("Sign-from-full-pool", func(b *testing.B) {
		// Sign as callers call it (lock, pop, zeroing), from a pool of
		// b.N nonces; from half on the refill goroutine runs alongside.
		s, err := New(priv, b.N)
		if err != nil {
			b.Fatal(err)
		}
		s.Fill()
		b.ResetTimer()
		for range b.N {
			s.Sign(msg)
		}
		b.StopTimer()
		if _, direct := s.Counts(); direct != 0 {
			b.Fatalf("%d signatures found the pool empty", direct)
		}
	})
	b.Run("refill-one", func(b *testing.B) {
		var n nonce
		for b.Loop() {
			newNonce(&n)
		}
	})
}

// TestNewDirectSignsAsRFC8032: a Signer made by NewDirect has no pool:
// every signature is crypto/ed25519.Sign's, byte for byte, and it refuses
// a key whose public half is not its seed's.
func TestNewDirectSignsAsRFC8032(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewDirect(key)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		msg := []byte(fmt.Sprintf("message %d", i))
		if got, want := s.Sign(msg), ed25519.Sign(key, msg); !bytes.Equal(got, want) {
			t.Fatalf("message %d: signature %x, want ed25519.Sign's %x", i, got, want)
		}
	}
	if pooled, direct := s.Counts(); pooled != 0 || direct != 50 {
		t.Errorf("counts: %d pooled, %d direct; want 0, 50", pooled, direct)
	}
	if s.refilling || cap(s.pool) != 0 {
		t.Errorf("a direct signer has a pool (cap %d) or a refill running (%v)", cap(s.pool), s.refilling)
	}
	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mixed := append(append(ed25519.PrivateKey{}, key[:32]...), other[32:]...)
	if _, err := NewDirect(mixed); err == nil {
		t.Error("NewDirect took a key whose public half is another key's")
	}
	if _, err := NewDirect(key[:40]); err == nil {
		t.Error("NewDirect took a 40-byte key")
	}
}

// TestNoncesUseFullEntropy: r is drawn from 64 random bytes reduced mod
// L, so each of the 31 low bytes of its encoding takes many values over
// a few hundred nonces (the top byte is below 0x10, as L < 2^253). A
// nonce drawn from fewer random bytes — a short read, a seed slice cut —
// leaves whole bytes constant, and nonces of a few unknown bytes give
// the secret key away from a handful of signatures (lattice attacks on
// biased Schnorr nonces). Each R must be r·B.
func TestNoncesUseFullEntropy(t *testing.T) {
	const draws = 256
	var distinct [32]map[byte]bool
	for i := range distinct {
		distinct[i] = map[byte]bool{}
	}
	for range draws {
		var n nonce
		newNonce(&n)
		r := n.r.Bytes()
		for i, b := range r {
			distinct[i][b] = true
		}
		if R := new(edwards25519.Point).ScalarBaseMult(&n.r).Bytes(); !bytes.Equal(R, n.R[:]) {
			t.Fatal("a nonce's R is not r·B")
		}
	}
	// Uniform bytes take ~162 of 256 values over 256 draws (σ ≈ 5).
	for i := range 31 {
		if len(distinct[i]) < 100 {
			t.Errorf("byte %d of r took %d values over %d nonces, want ~162", i, len(distinct[i]), draws)
		}
	}
	if len(distinct[31]) < 8 {
		t.Errorf("the top byte of r took %d values over %d nonces, want ~16", len(distinct[31]), draws)
	}
}
