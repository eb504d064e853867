package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeComponentsFlag: serve -components sets global.components over
// the file and MYELIN_GLOBAL_COMPONENTS, and is validated with it.
func TestServeComponentsFlag(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "myelin.yaml")
	t.Setenv("MYELIN_GLOBAL_COMPONENTS", "mediaapi")
	t.Setenv("MYELIN_DATABASE_ENGINE", "postgres")
	t.Setenv("MYELIN_DATABASE_POSTGRES_URL", "postgres://u:p@127.0.0.1/db")
	t.Setenv("MYELIN_GLOBAL_REDIS_URL", "redis://127.0.0.1:6379/0")
	var out bytes.Buffer
	cfg, _, err := serveConfig([]string{"-config", path, "-components", "syncapi,keyserver"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Global.Runs("syncapi") || !cfg.Global.Runs("keyserver") || cfg.Global.Runs("mediaapi") || cfg.Global.Runs("clientapi") {
		t.Fatalf("components = %v, want syncapi and keyserver from the flag", cfg.Global.Components)
	}
	if _, _, err := serveConfig([]string{"-config", path, "-components", "syncapi,bogus"}, &out); err == nil || !strings.Contains(err.Error(), `"bogus" is not a component`) {
		t.Fatalf("-components syncapi,bogus: err = %v, want the unknown name refused", err)
	}
	t.Setenv("MYELIN_GLOBAL_REDIS_URL", "")
	if _, _, err := serveConfig([]string{"-config", path, "-components", "syncapi"}, &out); err == nil || !strings.Contains(err.Error(), "global.redis_url is empty") {
		t.Fatalf("-components syncapi without Redis: err = %v, want it refused", err)
	}
	cfg, _, err = serveConfig([]string{"-config", path, "-components", "all"}, &out)
	if err != nil || !cfg.Global.RunsAll() {
		t.Fatalf("-components all without Redis: %v, runs all %v", err, err == nil && cfg.Global.RunsAll())
	}
}
