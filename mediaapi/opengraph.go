package mediaapi

import (
	"io"
	"strconv"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// Caps on the HTML a preview parses (security case 28): the body is
// already cut at url_preview_max_bytes; these bound the work per byte.
const (
	maxHTMLTokens    = 200_000
	maxHTMLDepth     = 512
	maxHTMLTokenSize = 64 << 10
	maxOGValueRunes  = 1000
	maxOGKeys        = 64
)

// voidElements never have an end tag, so they do not deepen the tree.
var voidElements = map[atom.Atom]bool{
	atom.Area: true, atom.Base: true, atom.Br: true, atom.Col: true, atom.Embed: true,
	atom.Hr: true, atom.Img: true, atom.Input: true, atom.Link: true, atom.Meta: true,
	atom.Source: true, atom.Track: true, atom.Wbr: true,
}

// parseOpenGraph reads og:* properties from HTML, falling back to
// <title> and <meta name="description">. It streams tokens and stops at
// the first cap it reaches, returning what it found so far.
//
// Spec: client-server-api, GET /_matrix/client/v1/media/preview_url: "The
// OpenGraph data for the URL, which may be empty."
func parseOpenGraph(r io.Reader) map[string]any {
	z := html.NewTokenizer(r)
	z.SetMaxBuf(maxHTMLTokenSize)
	og := map[string]any{}
	var title, description string
	inTitle := false
	depth := 0
	for tokens := 0; tokens < maxHTMLTokens; tokens++ {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return finishOpenGraph(og, title, description)
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			a := atom.Lookup(name)
			if tt == html.StartTagToken && !voidElements[a] {
				depth++
				if depth > maxHTMLDepth {
					return finishOpenGraph(og, title, description)
				}
			}
			switch a {
			case atom.Title:
				inTitle = tt == html.StartTagToken && title == ""
			case atom.Meta:
				if hasAttr {
					readMeta(z, og, &description)
				}
			}
		case html.EndTagToken:
			if depth > 0 {
				depth--
			}
			name, _ := z.TagName()
			if atom.Lookup(name) == atom.Title {
				inTitle = false
			}
		case html.TextToken:
			if inTitle {
				title += string(z.Text())
				if len(title) > 4*maxOGValueRunes {
					inTitle = false
				}
			}
		}
	}
	return finishOpenGraph(og, title, description)
}

func readMeta(z *html.Tokenizer, og map[string]any, description *string) {
	var property, name, content string
	for {
		key, val, more := z.TagAttr()
		switch string(key) {
		case "property":
			property = strings.ToLower(strings.TrimSpace(string(val)))
		case "name":
			name = strings.ToLower(strings.TrimSpace(string(val)))
		case "content":
			content = string(val)
		}
		if !more {
			break
		}
	}
	if property == "" && strings.HasPrefix(name, "og:") {
		property = name
	}
	switch {
	case strings.HasPrefix(property, "og:") && len(property) <= 64:
		if _, seen := og[property]; !seen && len(og) < maxOGKeys {
			og[property] = clip(content)
		}
	case name == "description" && *description == "":
		*description = content
	}
}

func finishOpenGraph(og map[string]any, title, description string) map[string]any {
	if _, ok := og["og:title"]; !ok && strings.TrimSpace(title) != "" {
		og["og:title"] = clip(title)
	}
	if _, ok := og["og:description"]; !ok && strings.TrimSpace(description) != "" {
		og["og:description"] = clip(description)
	}
	// The spec's example gives image dimensions as integers.
	for _, k := range []string{"og:image:width", "og:image:height"} {
		if v, ok := og[k].(string); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
				og[k] = n
			} else {
				delete(og, k)
			}
		}
	}
	return og
}

// clip collapses whitespace and bounds a value's length.
func clip(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ToValidUTF8(s, "\uFFFD")
	if n := 0; len(s) > maxOGValueRunes {
		for i := range s {
			if n == maxOGValueRunes {
				return s[:i] + "…"
			}
			n++
		}
	}
	return s
}
