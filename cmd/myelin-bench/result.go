package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Result is one run of one scenario: what -json prints and report reads.
type Result struct {
	Scenario string         `json:"scenario"`
	Label    string         `json:"label"`
	URL      string         `json:"url"`
	Params   map[string]any `json:"params"`
	Started  time.Time      `json:"started"`
	// The measured phase only (preparing users, rooms and messages is not
	// measured).
	DurationS float64 `json:"duration_s"`
	// OK is the number of successful measured operations (for fanout: of
	// deliveries, one per listener per message).
	OK            int                 `json:"ok"`
	ErrorCount    int                 `json:"error_count"`
	Errors        map[string]int      `json:"errors,omitempty"`
	ErrorExamples map[string]string   `json:"error_examples,omitempty"`
	SetupError    string              `json:"setup_error,omitempty"`
	Latency       *Summary            `json:"latency_ms,omitempty"`
	Throughput    float64             `json:"throughput_per_s"`
	Other         map[string]*Summary `json:"other_latency_ms,omitempty"`
	Notes         map[string]float64  `json:"notes,omitempty"`
	Server        *ServerUsage        `json:"server,omitempty"`
}

// ServerUsage is what /proc said about the server around the measured phase.
type ServerUsage struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_s"`        // server utime+stime during the phase
	RSSStartKB int64   `json:"rss_start_kb"` // VmRSS when the phase began
	RSSEndKB   int64   `json:"rss_end_kb"`
	PeakRSSKB  int64   `json:"peak_rss_kb"` // VmHWM at the end: the peak since the server started
	// All CPUs' busy time during the phase, and the part of it that was
	// neither the server nor this tool: other work on a shared machine.
	MachineCPUSeconds float64 `json:"machine_cpu_s"`
	BenchCPUSeconds   float64 `json:"bench_cpu_s"`
	OtherCPUSeconds   float64 `json:"other_cpu_s"`
	Error             string  `json:"error,omitempty"`
}

// measure is an open measured phase.
type measure struct {
	start  time.Time
	before procSample
	pidErr error
}

func (e *env) startMeasure() *measure {
	m := &measure{}
	if e.opts.pid > 0 {
		m.before, m.pidErr = readProc(e.opts.pid)
	}
	m.start = time.Now()
	return m
}

// finish closes the phase: it fills res from rec and the /proc readings.
// Throughput is successes per second of the phase.
func (e *env) finish(res *Result, m *measure, rec *recorder) {
	end := time.Now()
	res.DurationS = end.Sub(m.start).Seconds()
	if e.opts.pid > 0 {
		u := &ServerUsage{PID: e.opts.pid}
		after, err := readProc(e.opts.pid)
		if err == nil {
			err = m.pidErr
		}
		if err != nil {
			u.Error = err.Error()
		} else {
			u.CPUSeconds = round(after.CPUSeconds-m.before.CPUSeconds, 2)
			u.RSSStartKB, u.RSSEndKB, u.PeakRSSKB = m.before.RSSKB, after.RSSKB, after.PeakRSSKB
			u.MachineCPUSeconds = round(after.MachineBusyS-m.before.MachineBusyS, 2)
			u.BenchCPUSeconds = round(after.SelfCPUSeconds-m.before.SelfCPUSeconds, 2)
			u.OtherCPUSeconds = round(max(0, u.MachineCPUSeconds-u.CPUSeconds-u.BenchCPUSeconds), 2)
		}
		res.Server = u
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	res.OK = len(rec.samples)
	res.Latency = summarize(rec.samples)
	if res.DurationS > 0 {
		res.Throughput = round(float64(res.OK)/res.DurationS, 2)
	}
	for k, n := range rec.errors {
		if res.Errors == nil {
			res.Errors = map[string]int{}
			res.ErrorExamples = map[string]string{}
		}
		res.Errors[k] += n
		res.ErrorCount += n
		if ex, ok := rec.example[k]; ok {
			res.ErrorExamples[k] = ex
		}
	}
}

func round(x float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	if x < 0 {
		return -float64(int64(-x*p+0.5)) / p
	}
	return float64(int64(x*p+0.5)) / p
}

func printHuman(w io.Writer, r *Result) {
	var params []string
	for k, v := range r.Params {
		params = append(params, fmt.Sprintf("%s=%v", k, v))
	}
	sort.Strings(params)
	fmt.Fprintf(w, "%s  %s  (%s)\n", r.Label, r.URL, strings.Join(params, " "))
	fmt.Fprintf(w, "  ok %d  errors %d  measured %.2fs  throughput %.2f/s\n", r.OK, r.ErrorCount, r.DurationS, r.Throughput)
	if r.Latency != nil {
		fmt.Fprintf(w, "  latency ms: %s\n", r.Latency)
	}
	for _, k := range sortedKeys(r.Other) {
		fmt.Fprintf(w, "  %s ms: %s\n", k, r.Other[k])
	}
	for _, k := range sortedKeys(r.Notes) {
		fmt.Fprintf(w, "  %s: %g\n", k, r.Notes[k])
	}
	for _, k := range sortedKeys(r.Errors) {
		fmt.Fprintf(w, "  error %dx %s", r.Errors[k], k)
		if ex := r.ErrorExamples[k]; ex != "" && ex != k {
			fmt.Fprintf(w, "  (e.g. %.200s)", ex)
		}
		fmt.Fprintln(w)
	}
	if r.SetupError != "" {
		fmt.Fprintf(w, "  setup failed: %.300s\n", r.SetupError)
	}
	if s := r.Server; s != nil {
		if s.Error != "" {
			fmt.Fprintf(w, "  server pid %d: %s\n", s.PID, s.Error)
		} else {
			fmt.Fprintf(w, "  server pid %d: cpu %.2fs  rss %.1f -> %.1f MB  peak %.1f MB; machine cpu %.2fs (tool %.2fs, other processes %.2fs)\n",
				s.PID, s.CPUSeconds, mb(s.RSSStartKB), mb(s.RSSEndKB), mb(s.PeakRSSKB), s.MachineCPUSeconds, s.BenchCPUSeconds, s.OtherCPUSeconds)
		}
	}
}

func (s *Summary) String() string {
	return fmt.Sprintf("p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (mean %.2f, n=%d)", s.P50, s.P90, s.P99, s.P999, s.Max, s.Mean, s.N)
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
