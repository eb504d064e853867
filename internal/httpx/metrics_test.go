package httpx

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape serves /metrics from m and parses the answer with the Prometheus
// project's own text-format parser, so a malformed line fails the test.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String()))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, rec.Body.String())
	}
	return families
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestMetricsExposition: counts, cumulative histogram buckets (a value on a
// bound falls in that bound's bucket), escaped label values, and the runtime
// and process series, as a Prometheus server would read them.
func TestMetricsExposition(t *testing.T) {
	m := NewMetrics()
	m.observe("/a", "GET", 200, 0.0005) // exactly on the first bound
	m.observe("/a", "GET", 200, 0.03)
	m.observe("/a", "GET", 404, 100) // above every bound: only +Inf
	odd := "/b\"q\\\nz"
	m.observe(odd, "PUT", 500, 0.2)

	fams := scrape(t, m)
	req := fams["myelin_http_requests_total"]
	if req.GetType() != dto.MetricType_COUNTER || req.GetHelp() == "" {
		t.Fatalf("requests family: %v", req)
	}
	got := map[string]float64{}
	for _, s := range req.GetMetric() {
		l := labels(s)
		got[l["route"]+" "+l["method"]+" "+l["code"]] = s.GetCounter().GetValue()
	}
	want := map[string]float64{"/a GET 200": 2, "/a GET 404": 1, odd + " PUT 500": 1}
	if len(got) != len(want) {
		t.Fatalf("request series %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("requests{%q} = %v, want %v", k, got[k], v)
		}
	}

	lat := fams["myelin_http_request_duration_seconds"]
	if lat.GetType() != dto.MetricType_HISTOGRAM || len(lat.GetMetric()) != 2 {
		t.Fatalf("latency family: %v", lat)
	}
	for _, s := range lat.GetMetric() {
		l := labels(s)
		h := s.GetHistogram()
		switch l["route"] {
		case "/a":
			if h.GetSampleCount() != 3 || h.GetSampleSum() != 100.0305 {
				t.Errorf("/a: count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
			}
			cum := map[float64]uint64{}
			for _, b := range h.GetBucket() {
				cum[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			for bound, n := range map[float64]uint64{0.0005: 1, 0.001: 1, 0.025: 1, 0.05: 2, 30: 2} {
				if cum[bound] != n {
					t.Errorf("/a le=%v: %d, want %d", bound, cum[bound], n)
				}
			}
			if len(h.GetBucket()) != len(latencyBuckets)+1 { // and +Inf
				t.Errorf("/a: %d buckets", len(h.GetBucket()))
			}
		case odd:
			if l["method"] != "PUT" || h.GetSampleCount() != 1 {
				t.Errorf("odd route: %v %v", l, h)
			}
		default:
			t.Errorf("unexpected latency series %v", l)
		}
	}

	for name, typ := range map[string]dto.MetricType{
		"go_goroutines":                 dto.MetricType_GAUGE,
		"go_info":                       dto.MetricType_GAUGE,
		"go_memstats_heap_inuse_bytes":  dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total": dto.MetricType_COUNTER,
		"go_gc_duration_seconds":        dto.MetricType_SUMMARY,
		"go_gc_gogc_percent":            dto.MetricType_GAUGE,
		"go_gc_gomemlimit_bytes":        dto.MetricType_GAUGE,
		"go_threads":                    dto.MetricType_GAUGE,
		"process_cpu_seconds_total":     dto.MetricType_COUNTER,
		"process_resident_memory_bytes": dto.MetricType_GAUGE,
		"process_start_time_seconds":    dto.MetricType_GAUGE,
		"process_open_fds":              dto.MetricType_GAUGE,
		"process_max_fds":               dto.MetricType_GAUGE,
	} {
		f := fams[name]
		if f == nil || f.GetType() != typ || len(f.GetMetric()) != 1 {
			t.Errorf("%s: %v", name, f)
		}
	}
	if v := fams["process_resident_memory_bytes"].GetMetric()[0].GetGauge().GetValue(); v < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %v", v)
	}
	if v := fams["go_goroutines"].GetMetric()[0].GetGauge().GetValue(); v < 1 {
		t.Errorf("go_goroutines = %v", v)
	}
}

// TestMetricsMiddleware: requests are labelled by the router's pattern, never
// the raw path, and concurrent requests are all counted.
func TestMetricsMiddleware(t *testing.T) {
	m := NewMetrics()
	r := chi.NewRouter()
	r.Use(m.Middleware)
	r.Get("/rooms/{roomID}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) })
	r.Get("/plain", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := httptest.NewServer(r)
	defer srv.Close()

	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, path := range []string{"/rooms/!secret:example.org", "/plain", "/nowhere"} {
				resp, err := http.Get(srv.URL + path)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()

	got := map[string]float64{}
	for _, s := range scrape(t, m)["myelin_http_requests_total"].GetMetric() {
		l := labels(s)
		got[l["route"]+" "+l["method"]+" "+l["code"]] = s.GetCounter().GetValue()
	}
	want := map[string]float64{"/rooms/{roomID} GET 202": 20, "/plain GET 200": 20, "unmatched GET 404": 20}
	if len(got) != len(want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%q = %v, want %v", k, got[k], v)
		}
	}
}

// TestMetricsSeriesOrder: the request series come out ordered by code,
// method and route, and the latency series by method and route, whatever
// order they were first observed in (the series live in maps).
func TestMetricsSeriesOrder(t *testing.T) {
	m := NewMetrics()
	for _, o := range []struct {
		route, method string
		code          int
	}{
		{"/z", "GET", 200}, {"/a", "PUT", 200}, {"/m", "GET", 404}, {"/a", "GET", 500},
		{"/b", "GET", 200}, {"/a", "GET", 200}, {"/c", "DELETE", 404}, {"/b", "PUT", 200},
	} {
		m.observe(o.route, o.method, o.code, 0.01)
	}
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	var requests, latencies []string
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "myelin_http_requests_total{"); ok {
			requests = append(requests, rest[:strings.IndexByte(rest, '}')])
		}
		if rest, ok := strings.CutPrefix(line, "myelin_http_request_duration_seconds_count{"); ok {
			latencies = append(latencies, rest[:strings.IndexByte(rest, '}')])
		}
	}
	wantRequests := []string{
		`code="200",method="GET",route="/a"`, `code="200",method="GET",route="/b"`, `code="200",method="GET",route="/z"`,
		`code="200",method="PUT",route="/a"`, `code="200",method="PUT",route="/b"`,
		`code="404",method="DELETE",route="/c"`, `code="404",method="GET",route="/m"`,
		`code="500",method="GET",route="/a"`,
	}
	wantLatencies := []string{
		`method="DELETE",route="/c"`, `method="GET",route="/a"`, `method="GET",route="/b"`,
		`method="GET",route="/m"`, `method="GET",route="/z"`, `method="PUT",route="/a"`, `method="PUT",route="/b"`,
	}
	if !slices.Equal(requests, wantRequests) {
		t.Errorf("request series in order\n%q\nwant\n%q", requests, wantRequests)
	}
	if !slices.Equal(latencies, wantLatencies) {
		t.Errorf("latency series in order\n%q\nwant\n%q", latencies, wantLatencies)
	}
}
