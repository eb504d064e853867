package config

import (
	"strings"
	"testing"
)

func TestRedisURLValidation(t *testing.T) {
	for _, tc := range []struct {
		env     []string
		wantErr string // "" means valid
	}{
		{nil, ""}, // empty: in process
		{[]string{"MYELIN_GLOBAL_REDIS_URL=redis://127.0.0.1:6379/0"}, ""},
		{[]string{"MYELIN_GLOBAL_REDIS_URL=rediss://:secret@redis.example:6380/2"}, ""},
		{[]string{"MYELIN_GLOBAL_REDIS_URL=127.0.0.1:6379"}, "global.redis_url: must start with redis://"},
		{[]string{"MYELIN_GLOBAL_REDIS_URL=http://127.0.0.1:6379"}, "global.redis_url: must start with redis://"},
		{[]string{"MYELIN_GLOBAL_REDIS_URL=redis://:hunter2@127.0.0.1:6379/notanumber"}, "global.redis_url: is not a valid Redis URL"},
		{[]string{"MYELIN_GLOBAL_REDIS_URL=redis://127.0.0.1:6379/0", "MYELIN_GLOBAL_REDIS_PREFIX="}, "global.redis_prefix: is empty"},
	} {
		_, err := Parse(nil, tc.env)
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.env, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%v: err = %v, want one containing %q", tc.env, err, tc.wantErr)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%v: the error shows the password: %v", tc.env, err)
		}
	}
	cfg, err := Parse([]byte("global:\n  redis_url: redis://10.0.0.5:6379/1\n"), nil)
	if err != nil || cfg.Global.RedisURL != "redis://10.0.0.5:6379/1" || cfg.Global.RedisPrefix != "myelin:" {
		t.Fatalf("cfg = %+v, err = %v", cfg, err)
	}
	if !strings.Contains(string(Sample(Defaults())), "# env: MYELIN_GLOBAL_REDIS_URL") {
		t.Error("the sample does not document redis_url")
	}
}
