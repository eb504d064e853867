package httpx

import (
	"bufio"
	"bytes"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
)

// Metrics records request counts and latencies by route pattern (never by
// raw path, which would hold user and room IDs), and serves them with the Go
// runtime's and the process's figures in the Prometheus text exposition
// format (version 0.0.4).
//
// It is written here rather than taken from the Prometheus client library:
// two metric families and a page of text are all Myelin exports, and the
// library (with the protobuf runtime it links in) was ~1.8 MB of every
// binary's resident text, metrics on or off. The series names and labels are
// those the library produced, so dashboards keep working.
type Metrics struct {
	mu       sync.RWMutex
	requests map[requestSeries]*atomic.Uint64    // guarded by mu (the map; the counters are atomic)
	latency  map[latencySeries]*latencyHistogram // guarded by mu (the map; each histogram has its own lock)
}

type requestSeries struct {
	route, method string
	code          int
}

type latencySeries struct{ route, method string }

// latencyBuckets are the upper bounds (seconds) of the latency histogram.
var latencyBuckets = [...]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

type latencyHistogram struct {
	mu     sync.Mutex
	counts histogramCounts // guarded by mu
}

// histogramCounts is one latency series' state.
type histogramCounts struct {
	buckets [len(latencyBuckets)]uint64 // non-cumulative counts per bucket
	count   uint64
	sum     float64
}

// NewMetrics returns an empty set of HTTP metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		requests: map[requestSeries]*atomic.Uint64{},
		latency:  map[latencySeries]*latencyHistogram{},
	}
}

// Middleware observes each request once the router has matched it.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec, ok := w.(*statusRecorder)
		if !ok {
			rec = &statusRecorder{ResponseWriter: w}
		}
		next.ServeHTTP(rec, r)
		route := "unmatched"
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			if p := rctx.RoutePattern(); p != "" {
				route = p
			}
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		m.observe(route, r.Method, status, time.Since(start).Seconds())
	})
}

// observe counts one request and records its latency.
func (m *Metrics) observe(route, method string, code int, seconds float64) {
	rk := requestSeries{route: route, method: method, code: code}
	lk := latencySeries{route: route, method: method}
	m.mu.RLock()
	c, h := m.requests[rk], m.latency[lk]
	m.mu.RUnlock()
	if c == nil || h == nil {
		m.mu.Lock()
		if c = m.requests[rk]; c == nil {
			c = new(atomic.Uint64)
			m.requests[rk] = c
		}
		if h = m.latency[lk]; h == nil {
			h = &latencyHistogram{}
			m.latency[lk] = h
		}
		m.mu.Unlock()
	}
	c.Add(1)

	// Prometheus buckets are "less than or equal": the first bound ≥ seconds.
	i, _ := slices.BinarySearch(latencyBuckets[:], seconds)
	h.mu.Lock()
	if i < len(h.counts.buckets) {
		h.counts.buckets[i]++
	}
	h.counts.count++
	h.counts.sum += seconds
	h.mu.Unlock()
}

// ServeHTTP serves every metric in the Prometheus text format.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	m.writeHTTP(&b)
	writeRuntimeMetrics(&b)
	writeProcessMetrics(&b)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(b.Bytes()) //nolint:errcheck // the client went away
}

// writeHTTP writes the request metrics, series sorted by their labels.
func (m *Metrics) writeHTTP(b *bytes.Buffer) {
	type request struct {
		requestSeries
		n uint64
	}
	type latency struct {
		latencySeries
		h histogramCounts
	}
	m.mu.RLock()
	requests := make([]request, 0, len(m.requests))
	for k, c := range m.requests {
		requests = append(requests, request{k, c.Load()})
	}
	latencies := make([]latency, 0, len(m.latency))
	for k, h := range m.latency {
		h.mu.Lock()
		latencies = append(latencies, latency{k, h.counts})
		h.mu.Unlock()
	}
	m.mu.RUnlock()

	// Labels in name order, series in label order, as the client library wrote them.
	// sort.Slice rather than slices.SortFunc: the generic sort would link ~9
	// functions for each element type (~18 kB for these two), for a page read
	// by a scraper (docs/benchmarks.md, "idlerss4").
	sort.Slice(requests, func(i, j int) bool {
		a, b := &requests[i], &requests[j]
		if a.code != b.code {
			return a.code < b.code
		}
		if a.method != b.method {
			return a.method < b.method
		}
		return a.route < b.route
	})
	sort.Slice(latencies, func(i, j int) bool {
		a, b := &latencies[i], &latencies[j]
		if a.method != b.method {
			return a.method < b.method
		}
		return a.route < b.route
	})

	writeFamily(b, "myelin_http_requests_total", "counter", "HTTP requests by route, method and status code.")
	for _, r := range requests {
		b.WriteString("myelin_http_requests_total{code=\"")
		b.WriteString(strconv.Itoa(r.code))
		b.WriteString("\",method=")
		writeLabelValue(b, r.method)
		b.WriteString(",route=")
		writeLabelValue(b, r.route)
		b.WriteString("} ")
		b.WriteString(strconv.FormatUint(r.n, 10))
		b.WriteByte('\n')
	}

	const hist = "myelin_http_request_duration_seconds"
	writeFamily(b, hist, "histogram", "HTTP request latency by route and method.")
	for _, l := range latencies {
		labels := func(suffix string) {
			b.WriteString(hist + suffix + "{method=")
			writeLabelValue(b, l.method)
			b.WriteString(",route=")
			writeLabelValue(b, l.route)
		}
		var cumulative uint64
		for i, bound := range latencyBuckets {
			cumulative += l.h.buckets[i]
			labels("_bucket")
			b.WriteString(",le=\"")
			b.WriteString(formatFloat(bound))
			b.WriteString("\"} ")
			b.WriteString(strconv.FormatUint(cumulative, 10))
			b.WriteByte('\n')
		}
		labels("_bucket")
		b.WriteString(",le=\"+Inf\"} ")
		b.WriteString(strconv.FormatUint(l.h.count, 10))
		b.WriteByte('\n')
		labels("_sum")
		b.WriteString("} ")
		b.WriteString(formatFloat(l.h.sum))
		b.WriteByte('\n')
		labels("_count")
		b.WriteString("} ")
		b.WriteString(strconv.FormatUint(l.h.count, 10))
		b.WriteByte('\n')
	}
}

// writeFamily writes a metric family's HELP and TYPE lines.
func writeFamily(b *bytes.Buffer, name, typ, help string) {
	b.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " " + typ + "\n")
}

// writeSample writes one family of a single unlabelled sample.
func writeSample(b *bytes.Buffer, name, typ, help string, v float64) {
	writeFamily(b, name, typ, help)
	b.WriteString(name + " " + formatFloat(v) + "\n")
}

// writeLabelValue writes a quoted label value, escaping as the text format
// requires: backslash, double quote and line feed.
func writeLabelValue(b *bytes.Buffer, v string) {
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// formatFloat writes a sample value as the text format spells it.
func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// runtimeSamples are the runtime/metrics read for the go_* series.
var runtimeSamples = [...]string{
	"/gc/gogc:percent",
	"/gc/gomemlimit:bytes",
}

// writeRuntimeMetrics writes the Go runtime's figures under the names the
// Prometheus client's Go collector used.
func writeRuntimeMetrics(b *bytes.Buffer) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	writeFamily(b, "go_gc_duration_seconds", "summary", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.")
	b.WriteString("go_gc_duration_seconds_sum " + formatFloat(float64(ms.PauseTotalNs)/1e9) + "\n")
	b.WriteString("go_gc_duration_seconds_count " + strconv.FormatUint(uint64(ms.NumGC), 10) + "\n")

	samples := make([]metrics.Sample, len(runtimeSamples))
	for i, name := range runtimeSamples {
		samples[i].Name = name
	}
	metrics.Read(samples)
	if v := samples[0].Value; v.Kind() == metrics.KindUint64 {
		writeSample(b, "go_gc_gogc_percent", "gauge", "Heap size target percentage configured by GOGC or debug.SetGCPercent.", float64(v.Uint64()))
	}
	if v := samples[1].Value; v.Kind() == metrics.KindUint64 {
		writeSample(b, "go_gc_gomemlimit_bytes", "gauge", "Go runtime memory limit configured by GOMEMLIMIT or debug.SetMemoryLimit.", float64(v.Uint64()))
	}
	writeSample(b, "go_goroutines", "gauge", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	writeFamily(b, "go_info", "gauge", "Information about the Go environment.")
	b.WriteString("go_info{version=")
	writeLabelValue(b, runtime.Version())
	b.WriteString("} 1\n")

	for _, s := range []struct {
		name, typ, help string
		v               uint64
	}{
		{"go_memstats_alloc_bytes", "gauge", "Number of bytes allocated in heap and currently in use.", ms.Alloc},
		{"go_memstats_alloc_bytes_total", "counter", "Total number of bytes allocated in heap until now.", ms.TotalAlloc},
		{"go_memstats_buck_hash_sys_bytes", "gauge", "Number of bytes used by the profiling bucket hash table.", ms.BuckHashSys},
		{"go_memstats_frees_total", "counter", "Total number of heap objects frees.", ms.Frees},
		{"go_memstats_gc_sys_bytes", "gauge", "Number of bytes used for garbage collection system metadata.", ms.GCSys},
		{"go_memstats_heap_alloc_bytes", "gauge", "Number of heap bytes allocated and currently in use.", ms.HeapAlloc},
		{"go_memstats_heap_idle_bytes", "gauge", "Number of heap bytes waiting to be used.", ms.HeapIdle},
		{"go_memstats_heap_inuse_bytes", "gauge", "Number of heap bytes that are in use.", ms.HeapInuse},
		{"go_memstats_heap_objects", "gauge", "Number of currently allocated objects.", ms.HeapObjects},
		{"go_memstats_heap_released_bytes", "gauge", "Number of heap bytes released to OS.", ms.HeapReleased},
		{"go_memstats_heap_sys_bytes", "gauge", "Number of heap bytes obtained from system.", ms.HeapSys},
		{"go_memstats_mallocs_total", "counter", "Total number of heap objects allocated.", ms.Mallocs},
		{"go_memstats_mcache_inuse_bytes", "gauge", "Number of bytes in use by mcache structures.", ms.MCacheInuse},
		{"go_memstats_mcache_sys_bytes", "gauge", "Number of bytes used for mcache structures obtained from system.", ms.MCacheSys},
		{"go_memstats_mspan_inuse_bytes", "gauge", "Number of bytes in use by mspan structures.", ms.MSpanInuse},
		{"go_memstats_mspan_sys_bytes", "gauge", "Number of bytes used for mspan structures obtained from system.", ms.MSpanSys},
		{"go_memstats_next_gc_bytes", "gauge", "Number of heap bytes when next garbage collection will take place.", ms.NextGC},
		{"go_memstats_other_sys_bytes", "gauge", "Number of bytes used for other system allocations.", ms.OtherSys},
		{"go_memstats_stack_inuse_bytes", "gauge", "Number of bytes obtained from system for stack allocator in non-CGO environments.", ms.StackInuse},
		{"go_memstats_stack_sys_bytes", "gauge", "Number of bytes obtained from system for stack allocator.", ms.StackSys},
		{"go_memstats_sys_bytes", "gauge", "Number of bytes obtained from system.", ms.Sys},
	} {
		writeSample(b, s.name, s.typ, s.help, float64(s.v))
	}
	writeSample(b, "go_memstats_last_gc_time_seconds", "gauge", "Number of seconds since 1970 of last garbage collection.", float64(ms.LastGC)/1e9)
	writeSample(b, "go_sched_gomaxprocs_threads", "gauge", "The current runtime.GOMAXPROCS setting.", float64(runtime.GOMAXPROCS(0)))
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// writeProcessMetrics writes the process_* series from /proc (Linux); where
// /proc is missing it writes none.
func writeProcessMetrics(b *bytes.Buffer) {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): field n of proc(5) is f[n-3].
	if len(f) < 22 {
		return
	}
	field := func(n int) float64 {
		v, _ := strconv.ParseFloat(f[n-3], 64)
		return v
	}
	writeSample(b, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", (field(14)+field(15))/clockTicks)
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		writeSample(b, "process_open_fds", "gauge", "Number of open file descriptors.", float64(len(fds)))
	}
	if limit, ok := maxOpenFiles(); ok {
		writeSample(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.", limit)
	}
	writeSample(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", field(24)*float64(os.Getpagesize()))
	if boot, ok := bootTime(); ok {
		writeSample(b, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", boot+field(22)/clockTicks)
	}
	writeSample(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23))
	writeSample(b, "go_threads", "gauge", "Number of OS threads created.", field(20))
}

// maxOpenFiles reads the soft limit on open files from /proc/self/limits.
func maxOpenFiles() (float64, bool) {
	f, err := os.Open("/proc/self/limits")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Max open files"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return 0, false
			}
			if fields[0] == "unlimited" {
				return math.Inf(1), true
			}
			v, err := strconv.ParseFloat(fields[0], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// bootTime reads the system's boot time (seconds since the epoch) from /proc/stat.
func bootTime() (float64, bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "btime "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}
