package clientapi

import (
	"bytes"
	"html"
	"net/http"
)

// The HTML pages of single sign-on: the provider chooser, the
// confirmation before a login token (or a UIA stage) is handed out, the
// UIA fallback's completion page and the error page.
//
// They are written by ssoPage, not html/template: html/template links
// text/template, whose calls of reflect.Value.Method make the linker keep
// every exported method of every type in the binary (go-redis's hundreds
// of commands among them): the binary's text and tables were 27.5 MB
// instead of 19.2, and an idle server started from disk (as after a
// reboot) held ~2.4 MB more of them (26.0-26.3 MB against 23.5-24.0, over
// issue #6's 25 MB; docs/benchmarks.md, "Session 25"). The pages are five
// short, fixed documents whose every value lands in text or in a
// double-quoted attribute, where html.EscapeString (& < > " ') is the
// whole escaping needed. cmd/myelin's TestBinaryKeepsOnlyReachableMethods
// keeps the templates out.

// ssoPage is a page being written: fixed markup is added with raw,
// every value with text, which escapes it.
type ssoPage struct{ b bytes.Buffer }

// newSSOPage starts a page with the common head.
func newSSOPage() *ssoPage {
	p := &ssoPage{}
	p.raw(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>body{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em;line-height:1.5}
button,a.choice{display:block;margin:.5em 0;padding:.6em 1em;font-size:1em}</style></head><body>
`)
	return p
}

func (p *ssoPage) raw(s string) *ssoPage { p.b.WriteString(s); return p }

// text adds s escaped, for an element's text or a double-quoted attribute.
func (p *ssoPage) text(s string) *ssoPage { p.b.WriteString(html.EscapeString(s)); return p }

func (p *ssoPage) end() []byte { p.raw("</body></html>\n"); return p.b.Bytes() }

// ssoChoice is a provider on the chooser page.
type ssoChoice struct{ Name, Href string }

func confirmPage(client, userID, action, confirmation string) []byte {
	p := newSSOPage()
	p.raw(`<h1>Continue to `).text(client).raw(`?</h1>
<p>You signed in as <strong>`).text(userID).raw(`</strong>. <strong>`).text(client).raw(`</strong> is asking for access to this Matrix account.</p>
<p>Only continue if you started signing in there yourself. If you did not, close this page: someone may be trying to get into your account.</p>
`)
	confirmForm(p, action, confirmation, "Continue to "+client)
	return p.end()
}

func uiaConfirmPage(userID, operation, action, confirmation string) []byte {
	p := newSSOPage()
	p.raw(`<h1>Confirm: `).text(operation).raw(`?</h1>
<p>A client signed in as <strong>`).text(userID).raw(`</strong> is asking to <strong>`).text(operation).raw(`</strong>, and needs you to confirm.</p>
<p>If you did not just ask for this, do not continue: someone may have access to your account. Close this page and sign your devices out.</p>
`)
	confirmForm(p, action, confirmation, "Confirm")
	return p.end()
}

// confirmForm is the form that posts the confirmation back.
func confirmForm(p *ssoPage, action, confirmation, button string) {
	p.raw(`<form method="post" action="`).text(action).raw(`"><input type="hidden" name="confirmation" value="`).text(confirmation).raw(`">
<button type="submit">`).text(button).raw("</button></form>\n")
}

func uiaDonePage() []byte {
	return newSSOPage().raw(`<h1>Confirmed</h1>
<p>You can close this page and go back to your Matrix client.</p>
<script>` + uiaDoneScript + "</script>\n").end()
}

func errorPage(msg string) []byte {
	return newSSOPage().raw("<h1>Could not sign in</h1>\n<p>").text(msg).raw("</p>\n").end()
}

// chooserPage lists the providers; each Href is a path on this server
// built by the caller (escaped here as an attribute value).
func chooserPage(server string, choices []ssoChoice) []byte {
	p := newSSOPage()
	p.raw(`<h1>Sign in to `).text(server).raw("</h1>\n<p>Choose how to sign in:</p>\n")
	for _, c := range choices {
		p.raw(`<a class="choice" href="`).text(c.Href).raw(`">Continue with `).text(c.Name).raw("</a>\n")
	}
	return p.end()
}

// renderPage writes an HTML page. The page may not be framed (the
// confirmation button must not be clickjacked) and loads nothing.
func (s *Server) renderPage(w http.ResponseWriter, status int, page []byte) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	// The one script allowed is the UIA fallback's completion script
	// (by its hash); the pages load nothing else.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src '"+uiaDoneScriptHash+"'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	_, _ = w.Write(page)
}
