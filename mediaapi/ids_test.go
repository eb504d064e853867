package mediaapi

import (
	"mime"
	"net/netip"
	"strings"
	"testing"
	"unicode"
)

func TestMediaIDAndServerNameGrammar(t *testing.T) {
	for id, want := range map[string]bool{
		"AQwafuaFswefuhsfAFAgsw": true, "a-b_C9": true, "": false, "..": false, "a.b": false,
		"a/b": false, "%2e%2e": false, "a b": false, "é": false, strings.Repeat("a", 256): false,
	} {
		if validMediaID(id) != want {
			t.Errorf("validMediaID(%q) = %v", id, !want)
		}
	}
	for name, want := range map[string]bool{
		"matrix.org": true, "matrix.org:8448": true, "1.2.3.4": true, "[1234:5678::abcd]": true,
		"[::1]:8448": true, "localhost": true, "": false, "..": false, "a..b": false, ".a": false,
		"a.": false, "under_score.org": false, "a/b": false, "[nothex]": false, "[::1]x": false,
		"host:": false, "host:123456": false, "host:8x": false, "%2e%2e": false,
	} {
		if validServerName(name) != want {
			t.Errorf("validServerName(%q) = %v", name, !want)
		}
	}
}

func TestContentDisposition(t *testing.T) {
	for _, c := range []struct{ disposition, name, want string }{
		{"inline", "", "inline"},
		{"inline", "cat.png", `inline; filename="cat.png"`},
		{"attachment", "War and Peace.pdf", `attachment; filename="War and Peace.pdf"`},
		{"attachment", `a"b\c.txt`, `attachment; filename="a_b_c.txt"; filename*=UTF-8''a%22b%5Cc.txt`},
		{"attachment", "résumé.pdf", `attachment; filename="r_sum_.pdf"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`},
		{"attachment", "evil\r\nSet-Cookie: x=y", `attachment; filename="evilSet-Cookie: x=y"`},
		{"attachment", "../../etc/passwd", `attachment; filename=".._.._etc_passwd"; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd`},
	} {
		if got := contentDisposition(c.disposition, c.name); got != c.want {
			t.Errorf("contentDisposition(%q, %q) = %q, want %q", c.disposition, c.name, got, c.want)
		}
	}
}

func TestIPPolicy(t *testing.T) {
	def, _ := newIPPolicy(nil, nil)
	allowLoopback, _ := newIPPolicy([]string{"8.8.4.0/24"}, []string{"127.0.0.1"})
	for _, c := range []struct {
		policy *ipPolicy
		addr   string
		want   bool
	}{
		{def, "8.8.8.8", true}, {def, "2606:4700::1111", true},
		{def, "127.0.0.1", false}, {def, "10.1.2.3", false}, {def, "172.16.0.1", false},
		{def, "192.168.1.1", false}, {def, "169.254.169.254", false}, {def, "100.64.0.1", false},
		{def, "0.0.0.0", false}, {def, "224.0.0.1", false}, {def, "255.255.255.255", false},
		{def, "::1", false}, {def, "::", false}, {def, "::ffff:127.0.0.1", false},
		{def, "::ffff:8.8.8.8", false}, {def, "2002:7f00:1::", false}, {def, "64:ff9b::7f00:1", false},
		{def, "fd00::1", false}, {def, "fe80::1%eth0", false}, {def, "ff02::1", false},
		{allowLoopback, "127.0.0.1", true}, {allowLoopback, "127.0.0.2", false},
		{allowLoopback, "::ffff:127.0.0.1", false}, {allowLoopback, "8.8.4.4", false}, {allowLoopback, "8.8.8.8", true},
	} {
		if got := c.policy.allowed(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("allowed(%s) = %v, want %v", c.addr, got, c.want)
		}
	}
}

func TestOpenGraphCaps(t *testing.T) {
	deep := strings.Repeat("<div>", 100_000) + `<meta property="og:title" content="too deep">`
	if og := parseOpenGraph(strings.NewReader(deep)); og["og:title"] != nil {
		t.Errorf("parsed past the depth cap: %v", og)
	}
	huge := `<meta property="og:title" content="` + strings.Repeat("x", 1<<20) + `">`
	if og := parseOpenGraph(strings.NewReader(huge)); len(og) != 0 {
		t.Errorf("a token over the size cap was parsed: %d keys", len(og))
	}
	long := `<meta property="og:description" content="` + strings.Repeat("word ", 5000) + `">`
	if d, _ := parseOpenGraph(strings.NewReader(long))["og:description"].(string); len([]rune(d)) > maxOGValueRunes+1 {
		t.Errorf("og:description is %d runes", len([]rune(d)))
	}
}

// FuzzMediaPath checks that anything the path validators accept is free
// of traversal material, so it is safe however it is later used.
func FuzzMediaPath(f *testing.F) {
	for _, s := range []string{"abc", "..", "%2e%2e", "a/b", "matrix.org:8448", "[::1]", "a..b", "\x00"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, serverName, mediaID string) {
		if checkMXC(serverName, mediaID) != nil {
			return
		}
		for _, s := range []string{serverName, mediaID} {
			if strings.Contains(s, "..") || strings.ContainsAny(s, "/\\%\x00") {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}

// FuzzContentDisposition checks that any file name yields one header line
// that parses back to the cleaned name.
func FuzzContentDisposition(f *testing.F) {
	for _, s := range []string{"", "cat.png", `a"b`, "résumé.pdf", "x\r\ny", "\xff\xfe", "%41", "a;b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		header := contentDisposition("attachment", name)
		for _, r := range header {
			if r < 0x20 || r > 0x7e {
				t.Fatalf("header %q has a non-printable or non-ASCII character", header)
			}
		}
		disposition, params, err := mime.ParseMediaType(header)
		if err != nil || disposition != "attachment" {
			t.Fatalf("header %q does not parse: %v", header, err)
		}
		want := cleanFilename(name)
		if params["filename"] != want {
			t.Fatalf("header %q gives filename %q, want %q", header, params["filename"], want)
		}
		if strings.IndexFunc(want, unicode.IsControl) >= 0 {
			t.Fatalf("cleaned name %q keeps control characters", want)
		}
	})
}
