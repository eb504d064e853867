package httpx

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestActivityCountsStartAndEnd(t *testing.T) {
	var a Activity
	var during uint64
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		during = a.Count()
	}))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if during != 1 {
		t.Errorf("count while the handler ran = %d, want 1 (the start)", during)
	}
	if got := a.Count(); got != 2 {
		t.Errorf("count after the request = %d, want 2 (start and end)", got)
	}
}
