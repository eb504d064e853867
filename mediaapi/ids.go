package mediaapi

import (
	"crypto/rand"
	"encoding/base64"
	"mime"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/myelin-chat/myelin/internal/mxerr"
)

// maxMediaIDLength bounds media IDs we accept from the network.
const maxMediaIDLength = 255

// validMediaID reports whether id may be a media ID.
//
// Spec: client-server-api, "Matrix Content (mxc://) URIs": only A-Za-z0-9,
// _ and -. This allow-list (rather than refusing "." and "/") is what keeps
// percent-encoded or UTF-8 traversals out ("Security considerations").
func validMediaID(id string) bool {
	if id == "" || len(id) > maxMediaIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validServerName reports whether name follows the server name grammar:
// a DNS name, an IPv4 literal or a bracketed IPv6 literal, with an
// optional port. DNS names must not have empty labels, so "..", ".x" and
// "x." are refused even though the grammar's character set allows them.
//
// Spec: appendices, "Server Name".
func validServerName(name string) bool {
	if name == "" || len(name) > 255+6 {
		return false
	}
	host, port := name, ""
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return false
		}
		host, port = name[:end+1], name[end+1:]
		if port != "" && port[0] != ':' {
			return false
		}
		addr, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return false
		}
	} else if i := strings.LastIndexByte(name, ':'); i >= 0 {
		host, port = name[:i], name[i:]
	}
	if port != "" {
		digits := port[1:]
		if len(digits) < 1 || len(digits) > 5 {
			return false
		}
		for i := 0; i < len(digits); i++ {
			if digits[i] < '0' || digits[i] > '9' {
				return false
			}
		}
	}
	if strings.HasPrefix(host, "[") {
		return true
	}
	if host == "" || len(host) > 255 {
		return false
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// checkMXC validates the two parts of an mxc:// URI from a request path.
func checkMXC(serverName, mediaID string) error {
	if !validServerName(serverName) {
		return mxerr.New(mxerr.InvalidParam, "invalid server name in media URI")
	}
	if !validMediaID(mediaID) {
		return mxerr.New(mxerr.InvalidParam, "invalid media ID: only A-Z, a-z, 0-9, _ and - are allowed")
	}
	return nil
}

// newMediaID returns a fresh random media ID (144 bits, URL-safe base64).
func newMediaID() string {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// maxFilenameRunes bounds stored file names.
const maxFilenameRunes = 255

// cleanFilename makes an upload's file name safe to store and echo:
// valid UTF-8, no control characters (which could split headers), at most
// maxFilenameRunes runes. Everything else is kept, because the spec says
// downloads must carry "the same filename" as the upload.
func cleanFilename(name string) string {
	name = strings.ToValidUTF8(name, "\uFFFD")
	var b strings.Builder
	n := 0
	for _, r := range name {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			continue
		}
		if n == maxFilenameRunes {
			break
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// inlineTypes are the content types served with Content-Disposition:
// inline. Spec: client-server-api, "Serving inline content".
var inlineTypes = map[string]bool{
	"text/css": true, "text/plain": true, "text/csv": true,
	"application/json": true, "application/ld+json": true,
	"image/jpeg": true, "image/gif": true, "image/png": true, "image/apng": true,
	"image/webp": true, "image/avif": true,
	"video/mp4": true, "video/webm": true, "video/ogg": true, "video/quicktime": true,
	"audio/mp4": true, "audio/webm": true, "audio/aac": true, "audio/mpeg": true,
	"audio/ogg": true, "audio/wave": true, "audio/wav": true, "audio/x-wav": true,
	"audio/x-pn-wav": true, "audio/flac": true, "audio/x-flac": true,
}

// servedContentType is the Content-Type a download carries: the uploaded
// one when it parses as a media type, else application/octet-stream.
// Spec: client-server-api, GET /download, "Content-Type" header.
func servedContentType(stored string) string {
	mediaType, params, err := mime.ParseMediaType(stored)
	if err != nil || !strings.Contains(mediaType, "/") {
		return "application/octet-stream"
	}
	return mime.FormatMediaType(mediaType, params)
}

// isInline reports whether contentType may be served inline.
func isInline(contentType string) bool {
	mediaType, _, err := mime.ParseMediaType(contentType)
	return err == nil && inlineTypes[mediaType]
}

// contentDisposition builds the Content-Disposition header: inline or
// attachment, and the file name as an ASCII quoted-string fallback plus,
// when the name is not plain ASCII, an RFC 5987 filename* with the exact
// UTF-8 name. An empty name gives no filename parameter, as the spec asks
// for uploads made without one.
//
// Spec: client-server-api, GET /download, "Content-Disposition"; RFC 6266.
func contentDisposition(disposition, filename string) string {
	filename = cleanFilename(filename)
	if filename == "" {
		return disposition
	}
	var fallback strings.Builder
	for _, r := range filename {
		if r < 0x20 || r >= 0x7f || r == '"' || r == '\\' || r == '/' || r == '%' {
			fallback.WriteByte('_')
			continue
		}
		fallback.WriteRune(r)
	}
	out := disposition + `; filename="` + fallback.String() + `"`
	if fallback.String() != filename {
		out += "; filename*=UTF-8''" + rfc5987Encode(filename)
	}
	return out
}

// rfc5987Encode percent-encodes s, keeping only RFC 5987 attr-char bytes.
func rfc5987Encode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// filenameFromDisposition extracts the file name a remote server gave in
// its Content-Disposition header (filename* preferred, as mime does).
func filenameFromDisposition(header string) string {
	if header == "" {
		return ""
	}
	_, params, err := mime.ParseMediaType(header)
	if err != nil {
		return ""
	}
	name := params["filename"]
	if !utf8.ValidString(name) {
		return ""
	}
	return cleanFilename(name)
}
