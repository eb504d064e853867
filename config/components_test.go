package config

import (
	"strings"
	"testing"
)

// TestComponentsValidation: global.components (env MYELIN_GLOBAL_COMPONENTS,
// as serve -components sets it) takes the component names or all; a
// subset needs PostgreSQL and Redis shared with the other processes.
func TestComponentsValidation(t *testing.T) {
	pg := []string{"MYELIN_DATABASE_ENGINE=postgres", "MYELIN_DATABASE_POSTGRES_URL=postgres://u:p@127.0.0.1/db"}
	redis := []string{"MYELIN_GLOBAL_REDIS_URL=redis://127.0.0.1:6379/0"}
	with := func(env ...[]string) []string {
		var out []string
		for _, e := range env {
			out = append(out, e...)
		}
		return out
	}
	for _, tc := range []struct {
		env     []string
		wantErr string   // "" means valid
		runs    []string // components the process runs, when valid
	}{
		{nil, "", ComponentNames},
		{[]string{"MYELIN_GLOBAL_COMPONENTS=all"}, "", ComponentNames},
		{[]string{"MYELIN_GLOBAL_COMPONENTS=" + strings.Join(ComponentNames, ",")}, "", ComponentNames},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=syncapi"}, pg, redis), "", []string{"syncapi"}},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=clientapi, keyserver"}, pg, redis), "", []string{"clientapi", "keyserver"}},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=syncapi,roomserver"}, pg, redis), `global.components: "roomserver" is not a component`, nil},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=sync"}, pg, redis), `global.components: "sync" is not a component`, nil},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=all,syncapi"}, pg, redis), `"all" cannot be listed with other names`, nil},
		{[]string{"MYELIN_GLOBAL_COMPONENTS=syncapi"}, `database.engine is "sqlite"`, nil},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=syncapi"}, redis), `database.engine is "sqlite"`, nil},
		{with([]string{"MYELIN_GLOBAL_COMPONENTS=syncapi"}, pg), "global.redis_url is empty", nil},
	} {
		cfg, err := Parse(nil, tc.env)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err = %v, want one containing %q", tc.env, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.env, err)
			continue
		}
		for _, name := range ComponentNames {
			want := false
			for _, r := range tc.runs {
				want = want || r == name
			}
			if got := cfg.Global.Runs(name); got != want {
				t.Errorf("%v: Runs(%s) = %v, want %v", tc.env, name, got, want)
			}
		}
	}
	if !strings.Contains(string(Sample(Defaults())), "# env: MYELIN_GLOBAL_COMPONENTS") {
		t.Error("the sample config does not document global.components")
	}
}
