package appservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodRegistration = `id: irc
url: http://127.0.0.1:9000
as_token: as-secret
hs_token: hs-secret
sender_localpart: _irc_bot
rate_limited: false
protocols: [irc]
de.sorunome.msc2409.push_ephemeral: true
namespaces:
  users:
    - exclusive: true
      regex: "@_irc_.*:example.org"
  aliases:
    - exclusive: false
      regex: "#_irc_.*"
  rooms: []
`

func TestParseRegistration(t *testing.T) {
	reg, err := ParseRegistration([]byte(goodRegistration), "irc.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if reg.ID != "irc" || reg.URL != "http://127.0.0.1:9000" || reg.RateLimited || !reg.ReceiveEphemeral || !reg.LegacyEphemeralKey ||
		len(reg.Protocols) != 1 || reg.SenderID("example.org") != "@_irc_bot:example.org" {
		t.Fatalf("parsed %+v", reg)
	}
	for userID, want := range map[string]bool{
		"@_irc_alice:example.org":   true,
		"@_irc_bot:example.org":     true, // the sender
		"@alice:example.org":        false,
		"@x_irc_a:example.org":      false, // anchored at the start
		"@_irc_a:example.org.evil":  false, // and at the end
		"@_irc_alice:other.example": false,
	} {
		if got := reg.OwnsUser(userID, "example.org"); got != want {
			t.Errorf("OwnsUser(%s) = %v, want %v", userID, got, want)
		}
	}
	if !reg.OwnsAlias("#_irc_x:example.org") || reg.OwnsRoom("!a:example.org") {
		t.Error("alias/room namespaces")
	}

	// receive_ephemeral (v1.13), alone or with the MSC2409 name: the
	// stable transaction key.
	for _, flags := range []string{"receive_ephemeral: true\n", "receive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n"} {
		reg, err := ParseRegistration([]byte(strings.Replace(goodRegistration, "de.sorunome.msc2409.push_ephemeral: true\n", flags, 1)), "x")
		if err != nil || !reg.ReceiveEphemeral || reg.LegacyEphemeralKey {
			t.Fatalf("%q: %+v %v", flags, reg, err)
		}
	}
	if reg, err := ParseRegistration([]byte(strings.Replace(goodRegistration, "de.sorunome.msc2409.push_ephemeral: true\n", "", 1)), "x"); err != nil || reg.ReceiveEphemeral || reg.LegacyEphemeralKey {
		t.Fatalf("no ephemeral flag: %+v %v", reg, err)
	}

	nullURL := strings.Replace(goodRegistration, "url: http://127.0.0.1:9000", "url: null", 1)
	if reg, err := ParseRegistration([]byte(nullURL), "x"); err != nil || reg.URL != "" {
		t.Fatalf("url: null: %+v %v", reg, err)
	}
	if reg, err := ParseRegistration([]byte(strings.Replace(goodRegistration, "rate_limited: false\n", "", 1)), "x"); err != nil || !reg.RateLimited {
		t.Fatalf("rate_limited defaults to true: %+v %v", reg, err)
	}
}

func TestParseRegistrationRefusesBadFiles(t *testing.T) {
	for name, tc := range map[string]struct{ from, to, want string }{
		"missing url":      {"url: http://127.0.0.1:9000\n", "", "url is required"},
		"missing as_token": {"as_token: as-secret\n", "", "as_token is required"},
		"missing hs_token": {"hs_token: hs-secret\n", "", "hs_token is required"},
		"missing sender":   {"sender_localpart: _irc_bot\n", "", "sender_localpart is required"},
		"bad regex":        {`regex: "#_irc_.*"`, `regex: "#_irc_(["`, "invalid regex"},
		"typo key":         {"exclusive: true", "exclusve: true", "exclusve"},
		"unknown top key":  {"rate_limited: false", "rate_limitted: false", "rate_limitted"},
		"bad url":          {"http://127.0.0.1:9000", "ftp://x", "must be http(s)"},
		"no exclusive":     {"    - exclusive: false\n", "    - \n", "needs exclusive and regex"},
	} {
		t.Run(name, func(t *testing.T) {
			data := strings.Replace(goodRegistration, tc.from, tc.to, 1)
			if data == goodRegistration {
				t.Fatalf("replacement %q did not apply", tc.from)
			}
			_, err := ParseRegistration([]byte(data), "irc.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "irc.yaml") {
				t.Fatalf("err = %v, want one naming the file and containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadRefusesClashes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", goodRegistration)
	write("ignored.txt", "not yaml")
	reg, err := Load([]string{dir, filepath.Join(dir, "missing")})
	if err != nil || len(reg.All()) != 1 || reg.ByToken("as-secret") == nil || reg.ByID("irc") == nil {
		t.Fatalf("load: %v %v", reg, err)
	}
	if reg.ExclusiveUserOwner("@_irc_x:example.org") == nil || reg.ExclusiveAliasOwner("#_irc_x:example.org") != nil {
		t.Fatal("exclusive owners")
	}

	other := strings.NewReplacer("as-secret", "as2", "hs-secret", "hs2").Replace(goodRegistration)
	write("b.yaml", other)
	if _, err := Load([]string{dir}); err == nil || !strings.Contains(err.Error(), "registered twice") {
		t.Fatalf("duplicate id: %v", err)
	}
	write("b.yaml", strings.NewReplacer("id: irc", "id: irc2", "hs-secret", "hs2").Replace(goodRegistration))
	if _, err := Load([]string{dir}); err == nil || !strings.Contains(err.Error(), "as_token") {
		t.Fatalf("shared as_token: %v", err)
	}
	write("b.yaml", strings.NewReplacer("id: irc", "id: irc2", "as-secret", "as2").Replace(goodRegistration))
	if _, err := Load([]string{dir}); err == nil || !strings.Contains(err.Error(), "hs_token") {
		t.Fatalf("shared hs_token: %v", err)
	}
	write("b.yaml", strings.NewReplacer("id: irc", "id: irc2", "as-secret", "as2", "hs-secret", "as-secret").Replace(goodRegistration))
	if _, err := Load([]string{dir}); err == nil {
		t.Fatal("hs_token equal to another service's as_token was accepted")
	}
}

// To-device messages are opt-in: receive_ephemeral (or an MSC2409 name)
// together with org.matrix.msc3202: true.
func TestRegistrationToDeviceOptIn(t *testing.T) {
	base := "id: b\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: bot\nnamespaces: {}\n"
	for _, c := range []struct {
		extra string
		want  bool
	}{
		{"", false},
		{"receive_ephemeral: true\n", false},
		{"org.matrix.msc3202: true\n", false},
		{"receive_ephemeral: true\norg.matrix.msc3202: true\n", true},
		{"de.sorunome.msc2409.push_ephemeral: true\norg.matrix.msc3202: true\n", true},
		{"receive_ephemeral: true\norg.matrix.msc3202: false\n", false},
	} {
		reg, err := ParseRegistration([]byte(base+c.extra), "test")
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if reg.ToDevice != c.want {
			t.Errorf("%q: ToDevice %v, want %v", c.extra, reg.ToDevice, c.want)
		}
	}
}
