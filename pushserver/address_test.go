package pushserver

import (
	"net/netip"
	"testing"
)

// TestPublicAddress checks which gateway addresses may be dialled.
func TestPublicAddress(t *testing.T) {
	allow := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}
	for addr, want := range map[string]bool{
		"93.184.216.34":        true,
		"2606:2800:220:1::1":   true,
		"127.0.0.1":            false,
		"::1":                  false,
		"10.0.0.1":             false,
		"10.9.1.2":             true, // allowed
		"192.168.1.1":          false,
		"172.16.0.1":           false,
		"169.254.169.254":      false,
		"100.64.0.1":           false,
		"0.0.0.0":              false,
		"224.0.0.1":            false,
		"fe80::1":              false,
		"fc00::1":              false,
		"::ffff:127.0.0.1":     false, // IPv4-mapped loopback
		"::ffff:93.184.216.34": true,
	} {
		if got := publicAddress(netip.MustParseAddr(addr), allow); got != want {
			t.Errorf("publicAddress(%s) = %v, want %v", addr, got, want)
		}
	}
}
