package appservice

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"
)

// Namespace is one entry of a registration's users, aliases or rooms list.
type Namespace struct {
	// Exclusive: only this service may create or claim matching IDs.
	Exclusive bool
	// Regex is the pattern as written in the file.
	Regex string
	re    *regexp.Regexp // immutable after parsing
}

// Matches reports whether s falls in the namespace. Like the common
// implementations, the pattern is anchored at the start and end so that
// "@_irc_.*" cannot match "@bob:x_irc_"; ".*" still matches everything.
func (n Namespace) Matches(s string) bool { return n.re.MatchString(s) }

// Namespaces are a registration's three namespace lists.
type Namespaces struct {
	Users   []Namespace
	Aliases []Namespace
	Rooms   []Namespace
}

// Registration is one application service, as read from its YAML file.
// Immutable after Load.
//
// Spec: application-service-api, "Registration".
type Registration struct {
	ID string
	// URL is where transactions and queries go; empty when the file sets
	// url: null (the service only uses the client-server API).
	URL             string
	ASToken         string
	HSToken         string
	SenderLocalpart string
	Namespaces      Namespaces
	// RateLimited false exempts the service's users from rate limits.
	RateLimited bool
	Protocols   []string
	// ReceiveEphemeral: typing, receipts and presence are pushed in
	// transactions (receive_ephemeral; push_ephemeral and
	// de.sorunome.msc2409.push_ephemeral are its MSC2409 names).
	ReceiveEphemeral bool
	// LegacyEphemeralKey: the service asked for ephemeral data only by an
	// MSC2409 name (push_ephemeral, de.sorunome.msc2409.push_ephemeral),
	// so it is sent under MSC2409's key de.sorunome.msc2409.ephemeral,
	// the one such services read; receive_ephemeral (v1.13) gets the
	// stable key ephemeral.
	LegacyEphemeralKey bool
	// ToDevice: to-device messages for devices of the service's users
	// are pushed in transactions under de.sorunome.msc2409.to_device
	// (MSC2409, split off as MSC4203). It is opt-in: the service receives
	// ephemeral data and sets org.matrix.msc3202: true, the key bridges
	// that encrypt as their users ("appservice mode" encryption) put in
	// their registration.
	ToDevice bool
	// Source is the file the registration came from (for errors).
	Source string
}

// wireNamespace and wireRegistration are the YAML shapes. Pointers tell a
// missing key from an empty one.
type wireNamespace struct {
	Exclusive *bool   `yaml:"exclusive"`
	Regex     *string `yaml:"regex"`
}

type wireRegistration struct {
	ID              *string `yaml:"id"`
	URL             *string `yaml:"url"`
	ASToken         *string `yaml:"as_token"`
	HSToken         *string `yaml:"hs_token"`
	SenderLocalpart *string `yaml:"sender_localpart"`
	Namespaces      *struct {
		Users   []wireNamespace `yaml:"users"`
		Aliases []wireNamespace `yaml:"aliases"`
		Rooms   []wireNamespace `yaml:"rooms"`
	} `yaml:"namespaces"`
	RateLimited      *bool    `yaml:"rate_limited"`
	Protocols        []string `yaml:"protocols"`
	PushEphemeral    *bool    `yaml:"push_ephemeral"`
	ReceiveEphemeral *bool    `yaml:"receive_ephemeral"`
	// Unstable keys real registration files carry (Complement writes
	// them too); accepted so that other unknown keys can be refused and a
	// typo such as "exclusve" is an error, not a silently open namespace.
	MSC2409PushEphemeral *bool `yaml:"de.sorunome.msc2409.push_ephemeral"`
	MSC3202              *bool `yaml:"org.matrix.msc3202"`
	MSC4190              *bool `yaml:"io.element.msc4190"`
}

// ParseRegistration parses one registration file's bytes strictly.
func ParseRegistration(data []byte, source string) (*Registration, error) {
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	var w wireRegistration
	dec := yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField(), yaml.Strict())
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	reg := &Registration{Source: source, Protocols: w.Protocols}
	var errs []error
	need := func(name string, v *string) string {
		if v == nil || *v == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
			return ""
		}
		return *v
	}
	reg.ID = need("id", w.ID)
	reg.ASToken = need("as_token", w.ASToken)
	reg.HSToken = need("hs_token", w.HSToken)
	reg.SenderLocalpart = need("sender_localpart", w.SenderLocalpart)
	if w.URL != nil {
		reg.URL = strings.TrimRight(*w.URL, "/")
		if reg.URL != "" && !strings.HasPrefix(reg.URL, "http://") && !strings.HasPrefix(reg.URL, "https://") {
			errs = append(errs, fmt.Errorf("url %q must be http(s) or null", *w.URL))
		}
	} else if _, present := top["url"]; !present {
		// Spec: url is required but may be null.
		errs = append(errs, errors.New("url is required (it may be null)"))
	}
	if w.RateLimited != nil {
		reg.RateLimited = *w.RateLimited
	} else {
		reg.RateLimited = true
	}
	reg.ReceiveEphemeral = isTrue(w.PushEphemeral) || isTrue(w.ReceiveEphemeral) || isTrue(w.MSC2409PushEphemeral)
	reg.LegacyEphemeralKey = reg.ReceiveEphemeral && !isTrue(w.ReceiveEphemeral)
	reg.ToDevice = reg.ReceiveEphemeral && isTrue(w.MSC3202)
	if w.Namespaces == nil {
		errs = append(errs, errors.New("namespaces is required"))
	} else {
		parse := func(kind string, in []wireNamespace) []Namespace {
			var out []Namespace
			for i, n := range in {
				if n.Regex == nil || n.Exclusive == nil {
					errs = append(errs, fmt.Errorf("namespaces.%s[%d] needs exclusive and regex", kind, i))
					continue
				}
				re, err := regexp.Compile(`^(?:` + *n.Regex + `)$`)
				if err != nil {
					errs = append(errs, fmt.Errorf("namespaces.%s[%d]: invalid regex %q: %v", kind, i, *n.Regex, err))
					continue
				}
				out = append(out, Namespace{Exclusive: *n.Exclusive, Regex: *n.Regex, re: re})
			}
			return out
		}
		reg.Namespaces.Users = parse("users", w.Namespaces.Users)
		reg.Namespaces.Aliases = parse("aliases", w.Namespaces.Aliases)
		reg.Namespaces.Rooms = parse("rooms", w.Namespaces.Rooms)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	return reg, nil
}

// Load reads every registration named by paths: a path is a file, or a
// directory whose *.yaml and *.yml files are read in name order. A missing
// directory holds no registrations (Complement mounts one only when a
// blueprint has services). Duplicate IDs, as_tokens or hs_tokens, and
// as_tokens equal to another service's hs_token, are refused.
func Load(paths []string) (*Registry, error) {
	var regs []*Registration
	for _, p := range paths {
		info, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		files := []string{p}
		if info.IsDir() {
			files = nil
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, err
			}
			for _, e := range entries {
				if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
			sort.Strings(files)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			reg, err := ParseRegistration(data, f)
			if err != nil {
				return nil, err
			}
			regs = append(regs, reg)
		}
	}
	return NewRegistry(regs)
}

// Registry is the set of registered application services. Immutable.
type Registry struct {
	list    []*Registration
	byToken map[string]*Registration
	byID    map[string]*Registration
}

// NewRegistry checks regs for clashes and indexes them.
func NewRegistry(regs []*Registration) (*Registry, error) {
	r := &Registry{byToken: map[string]*Registration{}, byID: map[string]*Registration{}}
	hsTokens := map[string]string{}
	for _, reg := range regs {
		if prev, ok := r.byID[reg.ID]; ok {
			return nil, fmt.Errorf("application service id %q is registered twice (%s and %s)", reg.ID, prev.Source, reg.Source)
		}
		if prev, ok := r.byToken[reg.ASToken]; ok {
			return nil, fmt.Errorf("application services %q and %q share an as_token", prev.ID, reg.ID)
		}
		if prev, ok := hsTokens[reg.HSToken]; ok {
			return nil, fmt.Errorf("application services %q and %q share an hs_token", prev, reg.ID)
		}
		if reg.ASToken == reg.HSToken {
			return nil, fmt.Errorf("application service %q: as_token and hs_token must differ", reg.ID)
		}
		r.byID[reg.ID] = reg
		r.byToken[reg.ASToken] = reg
		hsTokens[reg.HSToken] = reg.ID
		r.list = append(r.list, reg)
	}
	for _, reg := range r.list {
		if other, ok := r.byToken[reg.HSToken]; ok {
			return nil, fmt.Errorf("application service %q: hs_token equals the as_token of %q", reg.ID, other.ID)
		}
	}
	return r, nil
}

// All lists the registrations in load order.
func (r *Registry) All() []*Registration {
	if r == nil {
		return nil
	}
	return r.list
}

// ByToken returns the service whose as_token is token, or nil.
func (r *Registry) ByToken(token string) *Registration {
	if r == nil {
		return nil
	}
	return r.byToken[token]
}

// ByID returns the service with this id, or nil.
func (r *Registry) ByID(id string) *Registration {
	if r == nil {
		return nil
	}
	return r.byID[id]
}

// ExclusiveUserOwner returns the service that holds userID in an exclusive
// user namespace, or nil.
func (r *Registry) ExclusiveUserOwner(userID string) *Registration {
	for _, reg := range r.All() {
		if matchAny(reg.Namespaces.Users, userID, true) {
			return reg
		}
	}
	return nil
}

// ExclusiveAliasOwner returns the service that holds alias in an
// exclusive alias namespace, or nil.
func (r *Registry) ExclusiveAliasOwner(alias string) *Registration {
	for _, reg := range r.All() {
		if matchAny(reg.Namespaces.Aliases, alias, true) {
			return reg
		}
	}
	return nil
}

// SenderID is the user ID of the service's sender_localpart.
func (reg *Registration) SenderID(serverName string) string {
	return "@" + reg.SenderLocalpart + ":" + serverName
}

// OwnsUser reports whether userID is the service's sender or in one of
// its user namespaces (exclusive or not).
func (reg *Registration) OwnsUser(userID, serverName string) bool {
	return userID == reg.SenderID(serverName) || matchAny(reg.Namespaces.Users, userID, false)
}

// OwnsAlias reports whether alias is in one of its alias namespaces.
func (reg *Registration) OwnsAlias(alias string) bool {
	return matchAny(reg.Namespaces.Aliases, alias, false)
}

// OwnsRoom reports whether roomID is in one of its room namespaces.
func (reg *Registration) OwnsRoom(roomID string) bool {
	return matchAny(reg.Namespaces.Rooms, roomID, false)
}

func matchAny(ns []Namespace, s string, exclusiveOnly bool) bool {
	for _, n := range ns {
		if (!exclusiveOnly || n.Exclusive) && n.Matches(s) {
			return true
		}
	}
	return false
}

func isTrue(b *bool) bool { return b != nil && *b }
