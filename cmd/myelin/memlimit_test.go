package main

import (
	"io"
	"math"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/myelin-chat/myelin/config"
)

// TestApplyMemoryLimit: global.memory_limit_mb becomes the runtime's soft
// limit, 0 removes it, and GOMEMLIMIT in the environment wins over the file.
func TestApplyMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	noEnv := func(string) string { return "" }

	cases := []struct {
		name    string
		mb      int64
		env     map[string]string
		preset  int64 // the limit in effect before the call
		want    int64
		wantEnv bool
	}{
		{name: "config value", mb: 200, preset: math.MaxInt64, want: 200 << 20},
		{name: "zero is no limit", mb: 0, preset: 50 << 20, want: math.MaxInt64},
		{name: "too large to count in bytes is no limit", mb: math.MaxInt64 >> 19, preset: 50 << 20, want: math.MaxInt64},
		{name: "GOMEMLIMIT wins", mb: 200, env: map[string]string{"GOMEMLIMIT": "300MiB"}, preset: 300 << 20, want: 300 << 20, wantEnv: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			debug.SetMemoryLimit(c.preset)
			getenv := noEnv
			if c.env != nil {
				getenv = func(k string) string { return c.env[k] }
			}
			got, fromEnv := applyMemoryLimit(c.mb, getenv)
			if got != c.want || fromEnv != c.wantEnv {
				t.Errorf("applyMemoryLimit(%d) = %d, %v; want %d, %v", c.mb, got, fromEnv, c.want, c.wantEnv)
			}
			if inEffect := debug.SetMemoryLimit(-1); inEffect != c.want {
				t.Errorf("runtime limit after the call = %d, want %d", inEffect, c.want)
			}
		})
	}
}

// TestMemoryLimitConfig: the field is documented in the sample config, can
// be overridden from the environment, and a negative value is refused.
func TestMemoryLimitConfig(t *testing.T) {
	if !strings.Contains(string(config.Sample(config.Defaults())), "# env: MYELIN_GLOBAL_MEMORY_LIMIT_MB") {
		t.Error("the sample config does not document global.memory_limit_mb")
	}
	cfg, err := loadConfig(t.TempDir()+"/myelin.yaml", true, io.Discard, "MYELIN_GLOBAL_MEMORY_LIMIT_MB=123")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Global.MemoryLimitMB != 123 {
		t.Errorf("MYELIN_GLOBAL_MEMORY_LIMIT_MB=123 gave %d", cfg.Global.MemoryLimitMB)
	}
	if _, err := loadConfig(t.TempDir()+"/myelin.yaml", true, io.Discard, "MYELIN_GLOBAL_MEMORY_LIMIT_MB=-1"); err == nil {
		t.Error("a negative global.memory_limit_mb was accepted")
	}
}
