package clientapi

import (
	"strings"
	"testing"
)

// TestSSOPagesEscapeEveryValue: every value a page shows, in text or in
// an attribute, comes out escaped, and nothing of it survives as markup.
func TestSSOPagesEscapeEveryValue(t *testing.T) {
	const evil = `"><script>alert('x')</script><a href='`
	const escaped = `&#34;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;a href=&#39;`
	pages := map[string]string{
		"confirm":     string(confirmPage(evil, evil, evil, evil)),
		"uia confirm": string(uiaConfirmPage(evil, evil, evil, evil)),
		"error":       string(errorPage(evil)),
		"chooser":     string(chooserPage(evil, []ssoChoice{{Name: evil, Href: evil}, {Name: "B & C", Href: "/x?a=1&b=2"}})),
	}
	wantCount := map[string]int{"confirm": 6, "uia confirm": 5, "error": 1, "chooser": 3}
	for name, page := range pages {
		if strings.Contains(page, "<script>") || strings.Contains(page, "'x'") {
			t.Errorf("%s page: a value came out as markup:\n%s", name, page)
		}
		if n := strings.Count(page, escaped); n != wantCount[name] {
			t.Errorf("%s page: %d escaped values, want %d:\n%s", name, n, wantCount[name], page)
		}
		if !strings.HasPrefix(page, "<!DOCTYPE html>") || !strings.HasSuffix(page, "</body></html>\n") {
			t.Errorf("%s page: not a whole document:\n%s", name, page)
		}
	}
	if c := pages["chooser"]; !strings.Contains(c, `href="/x?a=1&amp;b=2">Continue with B &amp; C</a>`) {
		t.Errorf("chooser page: an ordinary link is not escaped as an attribute:\n%s", c)
	}
	// The completion page holds the one script the pages' CSP allows,
	// byte for byte (the CSP names its hash).
	if d := string(uiaDonePage()); !strings.Contains(d, "<script>"+uiaDoneScript+"</script>") {
		t.Errorf("UIA completion page without its script:\n%s", d)
	}
}
