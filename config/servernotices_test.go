package config

import "testing"

func TestServerNoticesConfig(t *testing.T) {
	for _, tc := range []struct {
		localpart, avatar string
		ok                bool
	}{
		{"", "", true},
		{"_server", "", true},
		{"notices", "mxc://example.org/abc", true},
		{"Notices", "", false},
		{"no tices", "", false},
		{"server", "https://example.org/a.png", false},
	} {
		c := ServerNotices{}.Defaults()
		c.Localpart, c.AvatarURL = tc.localpart, tc.avatar
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("localpart %q avatar %q: Validate() = %v, want ok=%v", tc.localpart, tc.avatar, err, tc.ok)
		}
	}
	cfg, err := Parse(nil, []string{"MYELIN_CLIENT_API_SERVER_NOTICES_LOCALPART=_server"})
	if err != nil || cfg.ClientAPI.ServerNotices.Localpart != "_server" || cfg.ClientAPI.ServerNotices.RoomName != "Server Notices" {
		t.Errorf("env override: %+v, %v", cfg.ClientAPI.ServerNotices, err)
	}
}
