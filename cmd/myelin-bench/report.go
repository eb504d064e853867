package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// column is one server's results, in the order they were run.
type column struct {
	name    string
	results map[string]*Result // by label
}

type columnFlags []string

func (c *columnFlags) String() string     { return strings.Join(*c, ",") }
func (c *columnFlags) Set(v string) error { *c = append(*c, v); return nil }

// runReport prints markdown tables, one per scenario label, with one column
// per server, from the JSON lines that -json runs wrote.
func runReport(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	var cols columnFlags
	fs.Var(&cols, "column", "NAME=FILE: a column named NAME from the JSON lines in FILE (repeatable, in order)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(cols) == 0 {
		return errors.New("no -column given")
	}
	var columns []column
	var labels []string
	seen := map[string]bool{}
	for _, c := range cols {
		name, path, ok := strings.Cut(c, "=")
		if !ok {
			return fmt.Errorf("-column %q is not NAME=FILE", c)
		}
		results, order, err := readResults(path)
		if err != nil {
			return err
		}
		columns = append(columns, column{name: name, results: results})
		for _, l := range order {
			if !seen[l] {
				seen[l] = true
				labels = append(labels, l)
			}
		}
	}
	for _, label := range labels {
		writeTable(w, label, columns)
	}
	return nil
}

// readResults reads JSON lines; a later line with the same label wins.
func readResults(path string) (map[string]*Result, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	results := map[string]*Result{}
	var order []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if _, dup := results[r.Label]; !dup {
			order = append(order, r.Label)
		}
		results[r.Label] = &r
	}
	return results, order, sc.Err()
}

// row is one line of a table: a name and how to read the cell from a result.
type row struct {
	name string
	cell func(r *Result) string
}

var tableRows = []row{
	{"throughput (/s)", func(r *Result) string { return fmt.Sprintf("%.1f", r.Throughput) }},
	{"p50 (ms)", latency(func(s *Summary) float64 { return s.P50 })},
	{"p90 (ms)", latency(func(s *Summary) float64 { return s.P90 })},
	{"p99 (ms)", latency(func(s *Summary) float64 { return s.P99 })},
	{"p99.9 (ms)", latency(func(s *Summary) float64 { return s.P999 })},
	{"max (ms)", latency(func(s *Summary) float64 { return s.Max })},
	{"samples", func(r *Result) string { return fmt.Sprint(r.OK) }},
	{"send acknowledged p50 / p99 (ms)", func(r *Result) string {
		s := r.Other["send_ack"]
		if s == nil {
			return ""
		}
		return fmt.Sprintf("%s / %s", msCell(s.P50), msCell(s.P99))
	}},
	{"first sync (ms)", func(r *Result) string {
		if v, ok := r.Notes["first_ms"]; ok {
			return msCell(v)
		}
		return ""
	}},
	{"later syncs p50 / max (ms)", func(r *Result) string {
		s := r.Other["later_syncs"]
		if s == nil {
			return ""
		}
		return fmt.Sprintf("%s / %s", msCell(s.P50), msCell(s.Max))
	}},
	{"response size (KiB)", func(r *Result) string {
		if v, ok := r.Notes["response_kb"]; ok {
			return fmt.Sprintf("%.1f", v)
		}
		return ""
	}},
	{"errors", func(r *Result) string {
		if r.ErrorCount == 0 {
			return "0"
		}
		var parts []string
		for _, k := range sortedKeys(r.Errors) {
			parts = append(parts, fmt.Sprintf("%d× %s", r.Errors[k], k))
		}
		return strings.Join(parts, "; ")
	}},
	{"server CPU (s)", server(func(s *ServerUsage) string { return fmt.Sprintf("%.2f", s.CPUSeconds) })},
	{"server RSS at start → end (MB)", server(func(s *ServerUsage) string {
		return fmt.Sprintf("%.0f → %.0f", mb(s.RSSStartKB), mb(s.RSSEndKB))
	})},
	{"server peak RSS since start (MB)", server(func(s *ServerUsage) string { return fmt.Sprintf("%.0f", mb(s.PeakRSSKB)) })},
	{"other processes' CPU (s)", server(func(s *ServerUsage) string { return fmt.Sprintf("%.2f", s.OtherCPUSeconds) })},
}

func latency(get func(*Summary) float64) func(*Result) string {
	return func(r *Result) string {
		if r.Latency == nil {
			return ""
		}
		return msCell(get(r.Latency))
	}
}

func server(get func(*ServerUsage) string) func(*Result) string {
	return func(r *Result) string {
		if r.Server == nil || r.Server.Error != "" {
			return ""
		}
		return get(r.Server)
	}
}

func msCell(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// status says in words whether a result has figures: "ok", "not yet
// implemented (...)" when nothing succeeded and the server answered 404
// M_UNRECOGNIZED, or "failed: ..." otherwise.
func status(r *Result) string {
	if r.OK > 0 {
		return "ok"
	}
	for _, k := range sortedKeys(r.Errors) {
		if strings.Contains(k, "HTTP 404 M_UNRECOGNIZED") {
			op, _, _ := strings.Cut(k, ":")
			return fmt.Sprintf("not yet implemented (HTTP 404 M_UNRECOGNIZED on %s)", op)
		}
	}
	if r.SetupError != "" {
		return "failed: " + oneLine(r.SetupError, 160)
	}
	for _, k := range sortedKeys(r.Errors) {
		return "failed: " + oneLine(k, 160)
	}
	return "failed: no operation succeeded"
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

func writeTable(w io.Writer, label string, columns []column) {
	fmt.Fprintf(w, "### %s\n\n", label)
	// The parameters, from the first column that ran it.
	for _, c := range columns {
		if r := c.results[label]; r != nil {
			var params []string
			for _, k := range sortedKeys(r.Params) {
				params = append(params, fmt.Sprintf("%s=%v", k, r.Params[k]))
			}
			sort.Strings(params)
			fmt.Fprintf(w, "Scenario `%s`, %s.\n\n", r.Scenario, strings.Join(params, ", "))
			break
		}
	}
	fmt.Fprint(w, "| |")
	for _, c := range columns {
		fmt.Fprintf(w, " %s |", c.name)
	}
	fmt.Fprint(w, "\n|---|")
	for range columns {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprint(w, "\n| result |")
	for _, c := range columns {
		r := c.results[label]
		if r == nil {
			fmt.Fprint(w, " not run |")
			continue
		}
		fmt.Fprintf(w, " %s |", status(r))
	}
	fmt.Fprintln(w)
	for _, tr := range tableRows {
		cells := make([]string, len(columns))
		any := false
		for i, c := range columns {
			r := c.results[label]
			if r == nil || r.OK == 0 {
				cells[i] = "—"
				continue
			}
			if cells[i] = tr.cell(r); cells[i] != "" {
				any = true
			} else {
				cells[i] = "—"
			}
		}
		if !any {
			continue
		}
		fmt.Fprintf(w, "| %s | %s |\n", tr.name, strings.Join(cells, " | "))
	}
	fmt.Fprintln(w)
}
