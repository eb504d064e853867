package mediaapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/myelin-chat/myelin/config"
)

// builtinDeny lists addresses outbound media fetches must never reach:
// everything that is not the public internet. IPv4-mapped IPv6 addresses
// are checked as the IPv4 address they carry, and 6to4 and NAT64, which
// embed IPv4 addresses, are refused whole (security case 23).
var builtinDeny = mustPrefixes(
	"0.0.0.0/8",       // "this network", unspecified
	"10.0.0.0/8",      // private
	"100.64.0.0/10",   // CGNAT
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, cloud metadata (169.254.169.254)
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // TEST-NET-1
	"192.88.99.0/24",  // 6to4 relay anycast
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // TEST-NET-2
	"203.0.113.0/24",  // TEST-NET-3
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, broadcast
	"::/128",          // unspecified
	"::1/128",         // loopback
	"::ffff:0:0/96",   // IPv4-mapped (also checked unmapped)
	"64:ff9b::/96",    // NAT64
	"64:ff9b:1::/48",  // local-use NAT64
	"100::/64",        // discard-only
	"2001::/32",       // Teredo
	"2001:db8::/32",   // documentation
	"2002::/16",       // 6to4
	"fc00::/7",        // unique local (ULA)
	"fe80::/10",       // link-local
	"fec0::/10",       // site-local (deprecated)
	"ff00::/8",        // multicast
)

func mustPrefixes(list ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(list))
	for i, s := range list {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// ipPolicy decides which addresses outbound fetches may connect to.
type ipPolicy struct {
	// Both lists are immutable after newIPPolicy.
	deny  []netip.Prefix // configured; always wins
	allow []netip.Prefix // configured exemptions from builtinDeny
}

func newIPPolicy(deny, allow []string) (*ipPolicy, error) {
	p := &ipPolicy{}
	for _, s := range deny {
		prefix, err := config.ParseIPOrPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("media_api.outbound_ip_deny %q: %w", s, err)
		}
		p.deny = append(p.deny, prefix)
	}
	for _, s := range allow {
		prefix, err := config.ParseIPOrPrefix(s)
		if err != nil {
			return nil, fmt.Errorf("media_api.outbound_ip_allow %q: %w", s, err)
		}
		p.allow = append(p.allow, prefix)
	}
	return p, nil
}

func containsAny(list []netip.Prefix, addrs ...netip.Addr) bool {
	for _, p := range list {
		for _, a := range addrs {
			if p.Contains(a) {
				return true
			}
		}
	}
	return false
}

// allowed reports whether addr may be connected to. An IPv4-mapped
// address is judged as both its IPv6 and its IPv4 form: either being
// denied denies it.
func (p *ipPolicy) allowed(addr netip.Addr) bool {
	addr = addr.WithZone("")
	forms := []netip.Addr{addr}
	if addr.Is4In6() {
		forms = append(forms, addr.Unmap())
	}
	if containsAny(p.deny, forms...) {
		return false
	}
	for _, a := range forms {
		if containsAny(builtinDeny, a) && !containsAny(p.allow, a) {
			return false
		}
	}
	return true
}

// checkLiteral refuses a URL host that is a forbidden IP literal. The
// dialer checks every connection anyway; this catches literals the
// dialer would see in another form (Go dials an IPv4-mapped IPv6 literal
// as plain IPv4), so that "[::ffff:127.0.0.1]" is refused as written.
func (p *ipPolicy) checkLiteral(host string) error {
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return nil // a name: judged after resolution, at connect time
	}
	if !p.allowed(addr) {
		return fmt.Errorf("%w: %s", errForbiddenAddress, addr)
	}
	return nil
}

// errForbiddenAddress is returned (wrapped) by the guarded dialer.
var errForbiddenAddress = errors.New("connection to a forbidden address refused")

// control runs after DNS resolution, on the exact address about to be
// connected to, so neither a hostname resolving to an internal address,
// DNS rebinding, nor a redirect to one gets through.
func (p *ipPolicy) control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address", errForbiddenAddress, host)
	}
	if !p.allowed(addr) {
		return fmt.Errorf("%w: %s", errForbiddenAddress, addr)
	}
	return nil
}

// guardedClient returns an HTTP client whose every connection passes
// policy. base, if non-nil, supplies TLS settings. Proxies from the
// environment are ignored: a proxy would connect on our behalf unchecked.
func guardedClient(base *http.Client, policy *ipPolicy, maxRedirects int) *http.Client {
	var transport *http.Transport
	if base != nil {
		if t, ok := base.Transport.(*http.Transport); ok {
			transport = t.Clone()
		}
	}
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: policy.control}
	transport.Proxy = nil
	transport.DialContext = dialer.DialContext
	transport.DialTLSContext = nil
	transport.MaxResponseHeaderBytes = 64 << 10
	transport.ResponseHeaderTimeout = 30 * time.Second
	return &http.Client{
		Transport: transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to a %q URL refused", req.URL.Scheme)
			}
			return policy.checkLiteral(req.URL.Hostname())
		},
	}
}

// isForbiddenAddress reports whether err came from the guard.
func isForbiddenAddress(err error) bool { return errors.Is(err, errForbiddenAddress) }
