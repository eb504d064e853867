package appservice

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// Third-party networks: the homeserver asks the services that bridge a
// protocol (the registration's `protocols`) about that protocol, its
// users and its locations, and hands the merged answers to clients.
//
// Spec: application-service-api, "Third-party Networks" (the
// /_matrix/app/v1/thirdparty/* endpoints, authenticated by the hs_token)
// and client-server-api, "Third-party Networks".

// ThirdPartyKind is what a third-party lookup asks for.
type ThirdPartyKind string

// The two kinds of lookup. Each result of a user lookup carries a
// `userid`, each result of a location lookup an `alias`.
// Spec: application-service-api, definitions user.yaml and location.yaml.
const (
	ThirdPartyUser     ThirdPartyKind = "user"
	ThirdPartyLocation ThirdPartyKind = "location"
)

// maxThirdPartyBody bounds a service's answer to one third-party request.
const maxThirdPartyBody = 1 << 20

// instanceIDSeparator joins a service's ID and a network ID into the
// instance_id this homeserver gives a protocol instance. Synapse uses the
// same shape ("{appservice_id}|{network_id}"), so clients that kept an ID
// find the same form here.
const instanceIDSeparator = "|"

// InstanceID is the instance_id of network networkID of service reg:
// unique on this homeserver, as two services cannot share an ID.
// Spec: client-server-api, definitions/protocol.yaml (instance_id: "A
// unique identifier for this instance on the homeserver").
func InstanceID(reg *Registration, networkID string) string {
	return reg.ID + instanceIDSeparator + networkID
}

// ParseInstanceID reads an instance_id made by InstanceID: the service it
// names, which must be registered and bridge at least one protocol, and
// the network. It returns nil for any other string.
func (r *Registry) ParseInstanceID(id string) (*Registration, string) {
	for _, reg := range r.All() {
		network, ok := strings.CutPrefix(id, reg.ID+instanceIDSeparator)
		if ok && network != "" && len(reg.Protocols) > 0 {
			return reg, network
		}
	}
	return nil, ""
}

// protocolServices lists the services with a URL that registered protocol,
// in load order.
func (s *Server) protocolServices(protocol string) []*Registration {
	var out []*Registration
	for _, reg := range s.deps.Registry.All() {
		if reg.URL != "" && slices.Contains(reg.Protocols, protocol) {
			out = append(out, reg)
		}
	}
	return out
}

// thirdPartyGet asks one service GET /_matrix/app/v1/thirdparty{path},
// falling back to /_matrix/app/unstable/thirdparty{path} (legacy.go); it
// returns the decoded JSON answer of a 200, or false (logged) when the
// service failed, timed out, answered another status or something that
// is not JSON. A failing service never fails the client's request: the
// others still answer.
func (s *Server) thirdPartyGet(ctx context.Context, reg *Registration, path string, query url.Values, out any) bool {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	resp, err := s.doVersioned(ctx, reg, familyThirdParty, http.MethodGet,
		"/_matrix/app/v1/thirdparty"+path, "/_matrix/app/unstable/thirdparty"+path, query, nil)
	if err != nil {
		s.log.Warn("application service third-party query failed", "appservice", reg.ID, "path", path, "err", err)
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxThirdPartyBody+1))
	if err != nil || len(body) > maxThirdPartyBody {
		s.log.Warn("application service third-party answer unreadable or too large", "appservice", reg.ID, "path", path, "err", err)
		return false
	}
	if resp.StatusCode != http.StatusOK {
		// 404 is the service's "nothing found": not worth a warning.
		if resp.StatusCode != http.StatusNotFound {
			s.log.Warn("application service third-party query refused", "appservice", reg.ID, "path", path, "status", resp.StatusCode)
		}
		return false
	}
	if err := json.Unmarshal(body, out); err != nil {
		s.log.Warn("application service third-party answer is not the expected JSON", "appservice", reg.ID, "path", path, "err", err)
		return false
	}
	return true
}

// askEach calls ask for each of items at once and returns the answers in
// items' order (the zero value where ask reported false): one slow
// service delays the answer by its timeout, not by the sum of them.
func askEach[T, A any](items []T, ask func(T) (A, bool)) []A {
	answers := make([]A, len(items))
	var wg sync.WaitGroup
	for i, item := range items {
		wg.Go(func() {
			if a, ok := ask(item); ok {
				answers[i] = a
			}
		})
	}
	wg.Wait()
	return answers
}

// protocolAnswer is a service's protocol object: the fields the
// homeserver reads, and every field as sent, to pass on.
type protocolAnswer struct {
	raw       map[string]json.RawMessage
	instances []map[string]any
}

// fetchProtocol asks reg for its metadata of protocol.
// Spec: application-service-api, "GET /_matrix/app/v1/thirdparty/protocol/{protocol}".
func (s *Server) fetchProtocol(ctx context.Context, reg *Registration, protocol string) (*protocolAnswer, bool) {
	var raw map[string]json.RawMessage
	if !s.thirdPartyGet(ctx, reg, "/protocol/"+url.PathEscape(protocol), nil, &raw) || raw == nil {
		return nil, false
	}
	a := &protocolAnswer{raw: raw}
	if inst, ok := raw["instances"]; ok {
		var list []json.RawMessage
		if err := json.Unmarshal(inst, &list); err != nil {
			s.log.Warn("application service protocol instances are not an array", "appservice", reg.ID, "protocol", protocol)
			return nil, false
		}
		for _, item := range list {
			var instance map[string]any
			if json.Unmarshal(item, &instance) != nil || instance == nil {
				continue
			}
			// network_id is required, and the homeserver's instance_id
			// is made from it.
			network, _ := instance["network_id"].(string)
			if network == "" {
				s.log.Warn("application service protocol instance without network_id left out", "appservice", reg.ID, "protocol", protocol)
				continue
			}
			instance["instance_id"] = InstanceID(reg, network)
			a.instances = append(a.instances, instance)
		}
	}
	return a, true
}

// Protocol is the metadata of protocol merged from every service that
// registered it: the first answering service's fields (in registration
// load order), and the instances of all of them, each with the
// instance_id this homeserver gives it. It reports false when no service
// registered the protocol or none answered.
//
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/protocol/{protocol}"
// and definitions/protocol.yaml (instances "modified by the homeserver ...
// to include an instance_id").
func (s *Server) Protocol(ctx context.Context, protocol string) (map[string]any, bool) {
	return mergeProtocol(askEach(s.protocolServices(protocol), func(reg *Registration) (*protocolAnswer, bool) {
		return s.fetchProtocol(ctx, reg, protocol)
	}))
}

// mergeProtocol merges the answers of one protocol's services (nil for a
// service that failed).
func mergeProtocol(answers []*protocolAnswer) (map[string]any, bool) {
	var out map[string]any
	instances := []map[string]any{}
	for _, a := range answers {
		if a == nil {
			continue
		}
		if out == nil {
			out = map[string]any{}
			for k, v := range a.raw {
				if k != "instances" {
					out[k] = v
				}
			}
		}
		instances = append(instances, a.instances...)
	}
	if out == nil {
		return nil, false
	}
	out["instances"] = instances
	return out, true
}

// Protocols is Protocol for every protocol some service registered; those
// no service answered for are left out.
// Spec: client-server-api, "GET /_matrix/client/v3/thirdparty/protocols".
func (s *Server) Protocols(ctx context.Context) map[string]map[string]any {
	var names []string
	for _, reg := range s.deps.Registry.All() {
		if reg.URL == "" {
			continue
		}
		for _, p := range reg.Protocols {
			if !slices.Contains(names, p) {
				names = append(names, p)
			}
		}
	}
	results := askEach(names, func(name string) (map[string]any, bool) { return s.Protocol(ctx, name) })
	out := map[string]map[string]any{}
	for i, name := range names {
		if results[i] != nil {
			out[name] = results[i]
		}
	}
	return out
}

// ThirdPartyLookup asks for third-party users or locations. With a
// protocol it asks that protocol's services, passing fields as the query
// (GET /_matrix/app/v1/thirdparty/{kind}/{protocol}); without, it is a
// reverse lookup (fields holds `userid` or `alias`) put to every service
// that bridges some protocol (GET /_matrix/app/v1/thirdparty/{kind}). The
// results of every service are concatenated in registration load order;
// a service that fails or times out is skipped, and a result without its
// required fields is dropped. known is false when no service registered
// the protocol.
//
// Spec: application-service-api, "Third-party Networks"; the result
// shapes are definitions/user.yaml and location.yaml.
func (s *Server) ThirdPartyLookup(ctx context.Context, kind ThirdPartyKind, protocol string, fields url.Values) (results []map[string]any, known bool) {
	var regs []*Registration
	path := "/" + string(kind)
	if protocol != "" {
		regs = s.protocolServices(protocol)
		path += "/" + url.PathEscape(protocol)
	} else {
		for _, reg := range s.deps.Registry.All() {
			if reg.URL != "" && len(reg.Protocols) > 0 {
				regs = append(regs, reg)
			}
		}
	}
	answers := askEach(regs, func(reg *Registration) ([]map[string]any, bool) {
		var list []map[string]any
		ok := s.thirdPartyGet(ctx, reg, path, fields, &list)
		return list, ok
	})
	results = []map[string]any{}
	for i, list := range answers {
		for _, item := range list {
			if validThirdPartyResult(kind, item) {
				results = append(results, item)
			} else {
				s.log.Warn("application service third-party result without its required fields dropped", "appservice", regs[i].ID, "kind", kind)
			}
		}
	}
	return results, len(regs) > 0
}

// validThirdPartyResult checks the fields a result must have: userid (a
// user) or alias (a location), protocol, and a fields object.
func validThirdPartyResult(kind ThirdPartyKind, item map[string]any) bool {
	key := "userid"
	if kind == ThirdPartyLocation {
		key = "alias"
	}
	id, _ := item[key].(string)
	protocol, _ := item["protocol"].(string)
	_, fieldsOK := item["fields"].(map[string]any)
	return id != "" && protocol != "" && fieldsOK
}
