package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatus(t *testing.T) {
	tests := []struct {
		name string
		r    Result
		want string
	}{
		{"figures", Result{OK: 3, ErrorCount: 1, Errors: map[string]int{"send: timeout": 1}}, "ok"},
		{"endpoint missing", Result{Errors: map[string]int{"register: HTTP 404 M_UNRECOGNIZED": 1},
			SetupError: "registering the senders: register: HTTP 404 M_UNRECOGNIZED: Unrecognized request"},
			"not yet implemented (HTTP 404 M_UNRECOGNIZED on register)"},
		{"other failure", Result{Errors: map[string]int{"send: HTTP 500 M_UNKNOWN": 4}}, "failed: send: HTTP 500 M_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status(&tt.r); got != tt.want {
				t.Errorf("status = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReportOneColumnPerServer(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.jsonl")
	b := filepath.Join(dir, "b.jsonl")
	os.WriteFile(a, []byte(`{"scenario":"send","label":"send, 1 sender","params":{"messages":10},"ok":10,"throughput_per_s":14.2,"latency_ms":{"n":10,"p50":61.5,"p90":70,"p99":80,"p99_9":80,"max":80}}`+"\n"), 0o600)
	os.WriteFile(b, []byte(`{"scenario":"send","label":"send, 1 sender","params":{"messages":10},"ok":0,"error_count":1,"errors":{"register: HTTP 404 M_UNRECOGNIZED":1}}`+"\n"), 0o600)
	var out strings.Builder
	if err := runReport([]string{"-column", "Dendrite=" + a, "-column", "Myelin=" + b}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"### send, 1 sender",
		"| | Dendrite | Myelin |",
		"| result | ok | not yet implemented (HTTP 404 M_UNRECOGNIZED on register) |",
		"| throughput (/s) | 14.2 | — |",
		"| p50 (ms) | 61.5 | — |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestReportShowsTheFirstSync(t *testing.T) {
	a := filepath.Join(t.TempDir(), "a.jsonl")
	os.WriteFile(a, []byte(`{"scenario":"initialsync","label":"is","params":{"rooms":50},"ok":5,"latency_ms":{"n":5,"p50":9.5,"max":80.2},`+
		`"notes":{"first_ms":80.2,"response_kb":320},"other_latency_ms":{"later_syncs":{"n":4,"p50":9.1,"max":12.3}}}`+"\n"), 0o600)
	var out strings.Builder
	if err := runReport([]string{"-column", "Myelin=" + a}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| first sync (ms) | 80.2 |", "| later syncs p50 / max (ms) | 9.10 / 12.3 |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
