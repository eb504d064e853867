package main

import "testing"

// The expected value was computed independently:
// printf 'abc\0alice\0pw\0notadmin' | openssl dgst -sha1 -hmac secret
func TestSharedSecretMAC(t *testing.T) {
	got := sharedSecretMAC("secret", "abc", "alice", "pw", false)
	if want := "42e32623fe124933c326f9d2d67ff7c617915a10"; got != want {
		t.Errorf("mac = %s, want %s", got, want)
	}
}
