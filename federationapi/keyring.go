package federationapi

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/storage"
)

// keyRing finds other servers' signing keys and verifies signatures with
// them. Keys are cached in federation_server_keys with their validity;
// a key that is unknown, or not valid at the time asked about, is fetched
// from its server (GET /_matrix/key/v2/server) and, failing that, from
// each trusted notary (POST /_matrix/key/v2/query).
// Spec: server-server-api, "Retrieving server keys".
//
// It implements gomatrixserverlib.JSONVerifier, so event signature checks
// use it too.
type keyRing struct {
	s        *Server
	notaries []config.TrustedKeyServer

	mu sync.Mutex
	// lastFetch is the last fetch of each server's keys, so an unknown
	// key ID in a forged request cannot make us hammer a server. Entries
	// older than minRefetch no longer count and are dropped at most once
	// per minRefetch (lastSwept), so requests naming many servers do not
	// grow it beyond the fetches of about minRefetch. Guarded by mu.
	lastFetch map[string]fetchOutcome
	lastSwept time.Time
	// fetching serialises fetches per server; an entry lives while a
	// caller holds or waits for it. Guarded by mu.
	fetching map[string]*serverFetch
	// missing remembers, for minRefetch, the keys a fetch made after they
	// were asked for did not bring (server + "\x00" + key ID → when it
	// ended), so that the next request naming one is refused at once
	// instead of waiting for yet another fetch. Guarded by mu.
	missing map[string]time.Time
	// missingSwept is when missing, full, was last swept: it is swept at
	// most once per minRefetch, not on every request while it stays full
	// (10,000 entries walked under mu each time). Guarded by mu.
	missingSwept time.Time
	// slots bounds the fetches in flight across all servers: a fetch
	// holds one of its maxKeyFetches places, and a caller waits at most
	// slotWait for one. Guarded by mu (replaced only by tests).
	slots    chan struct{}
	slotWait time.Duration
}

// serverFetch is the lock of one server's fetches and how many callers
// hold or wait for it (guarded by keyRing.mu).
type serverFetch struct {
	sync.Mutex
	users int
}

// maxMissing bounds keyRing.missing (requests naming made-up key IDs):
// past it, entries older than minRefetch are dropped, and none is added
// while it stays full (such a request then waits for a fetch again).
const maxMissing = 10000

// maxKeyValidity is how far ahead a key may be trusted, whatever the
// valid_until_ts of its document: "Servers MUST use the lesser of this
// field and 7 days into the future" (server-server-api, "Publishing
// Keys"; gomatrixserverlib.StrictValiditySignatureCheck applies it).
const maxKeyValidity = 7 * 24 * time.Hour

// maxKeyFetches bounds the fetches of server keys in flight at once,
// whatever the servers: requests naming many servers (made-up ones
// whose fetches hang, say) cannot start more. keyFetchSlotWait is how
// long a fetch waits for a place before it fails (the request it was
// for then answered 401 M_UNAUTHORIZED, not left hanging).
const (
	maxKeyFetches    = 16
	keyFetchSlotWait = 5 * time.Second
)

// fetchOutcome is how a fetch of one server's keys ended.
type fetchOutcome struct {
	started time.Time
	ended   time.Time
	err     error // nil: the server's (or a notary's) document was stored
	// busy: the fetch found no place (maxKeyFetches) and asked nobody;
	// the callers waiting for it take its error, but the server is not
	// to blame, so the next fetch need not wait failedRefetch.
	busy bool
}

// minRefetch is how soon a server's keys may be fetched again after a
// fetch that succeeded: a request signed with a key ID its fresh
// document lacks waits that long for the next fetch (one per server at a
// time, whose outcome every waiter takes), so a stream of requests naming
// unknown keys makes at most one fetch every minRefetch.
const minRefetch = 5 * time.Second

// failedRefetch is how soon a server's keys may be fetched again after
// a fetch that failed (the server unreachable, say). It only delays the
// next fetch: a request signed with a key we lack waits for it rather
// than failing, so a server is trusted again as soon as it is reachable
// (not minRefetch later), and a stream of requests naming unknown keys
// still makes at most one fetch a second.
const failedRefetch = time.Second

// cachedKey is a row of federation_server_keys.
type cachedKey struct {
	key          ed25519.PublicKey
	validUntilTS int64
	expiredTS    int64
}

// validAt applies the validity rules: an old key verifies what was
// signed before it expired; a current key is judged by check (the room
// version's rule; for requests the strict one: signed no later than
// valid_until_ts, capped at seven days from now).
// Spec: rooms/v5, "Signing key validity period".
//
// A key of old_verify_keys signs events only, never requests: "a list
// of verify_keys that are valid for signing federation requests ... and
// for signing events ... old_verify_keys which are only valid for
// signing events" (server-server-api, "Publishing Keys").
func (k cachedKey) validAt(at spec.Timestamp, check gomatrixserverlib.SignatureValidityCheckFunc, use keyUse) bool {
	if k.expiredTS != 0 {
		return use == forEvents && int64(at) < k.expiredTS
	}
	return check(at, spec.Timestamp(k.validUntilTS))
}

// lockServer takes the lock of server's fetches; unlockServer releases
// it and forgets it when no other caller holds or waits for it.
func (r *keyRing) lockServer(server string) *serverFetch {
	r.mu.Lock()
	m := r.fetching[server]
	if m == nil {
		m = &serverFetch{}
		r.fetching[server] = m
	}
	m.users++
	r.mu.Unlock()
	m.Lock()
	return m
}

func (r *keyRing) unlockServer(server string, m *serverFetch) {
	m.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.users--; m.users == 0 {
		delete(r.fetching, server)
	}
}

// keyUse is what a signature being checked signs: an event (any key
// valid at the time, old_verify_keys included) or a federation request
// (a current key only).
type keyUse int

const (
	forEvents keyUse = iota
	forRequests
)

// VerifyJSONs implements gomatrixserverlib.JSONVerifier: a message is
// valid for a server if one of its signatures by that server verifies
// with a key valid at AtTS.
func (r *keyRing) VerifyJSONs(ctx context.Context, reqs []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	out := make([]gomatrixserverlib.VerifyJSONResult, len(reqs))
	for i, req := range reqs {
		check := req.ValidityCheckingFunc
		if check == nil {
			check = gomatrixserverlib.StrictValiditySignatureCheck
		}
		out[i].Error = r.verify(ctx, string(req.ServerName), req.Message, req.AtTS, check, forEvents)
	}
	return out, nil
}

// verify checks message's signature by server at time at, with a key
// good for use.
func (r *keyRing) verify(ctx context.Context, server string, message []byte, at spec.Timestamp, check gomatrixserverlib.SignatureValidityCheckFunc, use keyUse) error {
	keyIDs, err := gomatrixserverlib.ListKeyIDs(server, message)
	if err != nil {
		return fmt.Errorf("reading signatures: %w", err)
	}
	if len(keyIDs) == 0 {
		return fmt.Errorf("not signed by %s", server)
	}
	var lastErr error
	for _, keyID := range keyIDs {
		if !strings.HasPrefix(string(keyID), "ed25519:") {
			continue
		}
		key, err := r.key(ctx, server, string(keyID), at, check, use)
		if err != nil {
			lastErr = err
			continue
		}
		if err := gomatrixserverlib.VerifyJSON(server, keyID, key, message); err != nil {
			lastErr = fmt.Errorf("bad signature by %s %s: %w", server, keyID, err)
			continue
		}
		return nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no ed25519 signature by %s", server)
	}
	return lastErr
}

// key returns server's key keyID if it is valid at at, fetching it when
// the cache does not have a valid copy.
func (r *keyRing) key(ctx context.Context, server, keyID string, at spec.Timestamp, check gomatrixserverlib.SignatureValidityCheckFunc, use keyUse) (ed25519.PublicKey, error) {
	if server == r.s.serverName {
		if keyID == r.s.key.ID {
			return r.s.key.Public(), nil
		}
		for _, old := range r.s.oldKeys {
			if old.KeyID == keyID && use == forEvents && int64(at) < old.ExpiredTS {
				return old.Key, nil
			}
		}
		return nil, fmt.Errorf("unknown key %s of this server", keyID)
	}
	k, ok, err := r.cached(ctx, server, keyID)
	if err != nil {
		return nil, err
	}
	if ok && k.validAt(at, check, use) {
		return k.key, nil
	}
	// Not cached or not valid at that time: maybe the server has a newer
	// document (a refreshed valid_until_ts or a new key), unless a fetch
	// made since this key was first asked for did not have it.
	if !ok && r.knownMissing(server, keyID) {
		return nil, fmt.Errorf("unknown key %s of %s", keyID, server)
	}
	fetchErr := r.fetch(ctx, server, !ok, []string{keyID}, int64(at))
	if fetchErr != nil {
		r.s.log.Debug("fetching server keys failed", "server", server, "err", fetchErr)
	}
	k, ok, err = r.cached(ctx, server, keyID)
	if err != nil {
		return nil, err
	}
	if !ok {
		if fetchErr == nil { // the document was had, and lacks it
			r.noteMissing(server, keyID)
		}
		return nil, fmt.Errorf("unknown key %s of %s", keyID, server)
	}
	if !k.validAt(at, check, use) {
		return nil, fmt.Errorf("key %s of %s is not valid at %d", keyID, server, at)
	}
	return k.key, nil
}

func (r *keyRing) cached(ctx context.Context, server, keyID string) (cachedKey, bool, error) {
	var pub string
	var k cachedKey
	err := r.s.db.Reader().QueryRow(ctx, `SELECT public_key, valid_until_ts, expired_ts FROM federation_server_keys
		WHERE server_name = $1 AND key_id = $2`, server, keyID).Scan(&pub, &k.validUntilTS, &k.expiredTS)
	if storage.IsNoRows(err) {
		return k, false, nil
	}
	if err != nil {
		return k, false, err
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(pub, "="))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return k, false, nil
	}
	k.key = raw
	return k, true, nil
}

// knownMissing reports whether a fetch of server's keys that ended less
// than minRefetch ago, after keyID was asked for, lacked it.
func (r *keyRing) knownMissing(server, keyID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.missing[server+"\x00"+keyID]
	return ok && r.s.now().Sub(at) < minRefetch
}

// noteMissing records that server's keys, fetched after keyID was asked
// for, lack it.
func (r *keyRing) noteMissing(server, keyID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.s.now()
	if len(r.missing) >= maxMissing {
		if now.Sub(r.missingSwept) < minRefetch {
			return
		}
		r.missingSwept = now
		for k, at := range r.missing {
			if now.Sub(at) >= minRefetch {
				delete(r.missing, k)
			}
		}
		if len(r.missing) >= maxMissing {
			return
		}
	}
	r.missing[server+"\x00"+keyID] = now
}

// fetch asks server for its keys, then the notaries, storing what
// verifies. At most one fetch per server runs at a time. A caller takes
// the outcome of a fetch that started after it asked, or of one that
// failed while it waited; a fetch that started before it asked may have
// read the document before a key the caller names was added, so it does
// not count as one that lacks it. A server is not asked again within
// minRefetch of a fetch that succeeded, nor within failedRefetch of one
// that failed: a caller that comes sooner waits for the next fetch when
// newKey (it asks for a key ID the cache lacks) or after a failure, and
// otherwise (a cached key not valid at the time asked) returns at once.
// Spec: server-server-api, "Retrieving server keys".
//
// keyIDs and minValidUntil are what the caller needs (the key IDs, the
// time they must be valid at), asked of a notary; a fetch a caller takes
// the outcome of may have been made for other keys of the same server,
// but a notary answers with the server's whole key document.
func (r *keyRing) fetch(ctx context.Context, server string, newKey bool, keyIDs []string, minValidUntil int64) error {
	asked := r.s.now()
	lock := r.lockServer(server)
	defer r.unlockServer(server, lock)
	r.mu.Lock()
	last, fetched := r.lastFetch[server]
	r.mu.Unlock()
	if fetched {
		since := r.s.now().Sub(last.ended)
		switch {
		case last.started.After(asked):
			return last.err // it started, and ended, while this caller waited
		case last.err != nil && last.ended.After(asked):
			// It failed while this caller waited: the server is down now,
			// so no second fetch (and its timeout) on top.
			return last.err
		case last.err == nil && since < minRefetch && !newKey:
			return nil
		case last.err == nil && since < minRefetch:
			// The document fetched a moment ago lacks the key asked for:
			// the server may have just rotated it (or a port been reused by
			// another server), so wait until it may be fetched again rather
			// than refuse what it signed for the rest of minRefetch.
			if err := sleepCtx(ctx, minRefetch-since); err != nil {
				return err
			}
		case last.err != nil && !last.busy && since < failedRefetch:
			if err := sleepCtx(ctx, failedRefetch-since); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err // given up while waiting: no fetch, nothing to record
	}
	// The fetch outlives this caller's request (bounded by fetchNow's
	// own timeout): others waiting take its outcome, and a request that
	// ends at once must not record a failure the server did not cause
	// (refusing the requests that waited for the fetch) nor leave no
	// outcome (letting its next request fetch again at once).
	//
	// It first takes a place among the fetches in flight: one that finds
	// none in time fails, and the callers waiting for it with it (each
	// would have waited as long again).
	release, err := r.takeSlot(ctx)
	if err != nil {
		if ctx.Err() == nil { // not given up by the caller
			now := r.s.now()
			r.noteFetch(server, fetchOutcome{started: now, ended: now, err: err, busy: true})
		}
		return err
	}
	started := r.s.now()
	err = r.fetchNow(context.WithoutCancel(ctx), server, keyIDs, minValidUntil)
	release()
	r.noteFetch(server, fetchOutcome{started: started, ended: r.s.now(), err: err})
	return err
}

// errKeyFetchesBusy is a fetch's error when maxKeyFetches others ran for
// all of slotWait.
var errKeyFetchesBusy = errors.New("too many key fetches in flight")

// takeSlot waits, at most slotWait and while ctx lasts, for a place
// among the fetches in flight, and returns the function giving it back.
func (r *keyRing) takeSlot(ctx context.Context) (release func(), err error) {
	r.mu.Lock()
	slots, wait := r.slots, r.slotWait
	r.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errKeyFetchesBusy
	}
}

// noteFetch records how a fetch of server's keys went, first dropping,
// at most once per minRefetch, the outcomes too old to count (those that
// ended minRefetch ago or more; failedRefetch is shorter).
func (r *keyRing) noteFetch(server string, o fetchOutcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if o.ended.Sub(r.lastSwept) >= minRefetch {
		r.lastSwept = o.ended
		for s, last := range r.lastFetch {
			if o.ended.Sub(last.ended) >= minRefetch {
				delete(r.lastFetch, s)
			}
		}
	}
	r.lastFetch[server] = o
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fetchNow asks server for its keys, then the notaries (for keyIDs,
// valid until at least minValidUntil).
func (r *keyRing) fetchNow(ctx context.Context, server string, keyIDs []string, minValidUntil int64) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var errs []error
	doc, err := r.fetchDirect(ctx, server)
	if err == nil {
		return r.store(ctx, doc)
	}
	errs = append(errs, fmt.Errorf("direct: %w", err))
	for _, notary := range r.notaries {
		docs, err := r.fetchFromNotary(ctx, notary, server, keyIDs, minValidUntil)
		if err != nil {
			errs = append(errs, fmt.Errorf("notary %s: %w", notary.ServerName, err))
			continue
		}
		for _, d := range docs {
			if err := r.store(ctx, d); err != nil {
				return err
			}
		}
		if len(docs) > 0 {
			return nil
		}
	}
	return errors.Join(errs...)
}

// fetchDirect reads GET /_matrix/key/v2/server from server.
func (r *keyRing) fetchDirect(ctx context.Context, server string) (gomatrixserverlib.ServerKeys, error) {
	var raw json.RawMessage
	if err := r.s.client.unsigned(ctx, server, "GET", "/_matrix/key/v2/server", nil, &raw); err != nil {
		return gomatrixserverlib.ServerKeys{}, err
	}
	return checkKeyDocument(server, raw, r.s.now())
}

// fetchFromNotary asks a notary for server's keys: keyIDs, each with
// minimum_valid_until_ts minValidUntil so that a notary whose copy
// expires sooner fetches a fresh one (no key IDs: all of them). The
// response must be signed by the notary with the pinned key and each
// document by its own server.
// Spec: server-server-api, "Querying Keys Through Another Server"; rooms
// v5, "Signing key validity period" (servers MUST set
// minimum_valid_until_ts when using /query).
func (r *keyRing) fetchFromNotary(ctx context.Context, notary config.TrustedKeyServer, server string, keyIDs []string, minValidUntil int64) ([]gomatrixserverlib.ServerKeys, error) {
	criteria := map[string]any{}
	for _, id := range keyIDs {
		criteria[id] = map[string]int64{"minimum_valid_until_ts": minValidUntil}
	}
	body := map[string]any{"server_keys": map[string]any{server: criteria}}
	var resp struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := r.s.client.unsigned(ctx, notary.ServerName, "POST", "/_matrix/key/v2/query", body, &resp); err != nil {
		return nil, err
	}
	pinned, err := base64.RawStdEncoding.DecodeString(notary.PublicKey)
	if err != nil || len(pinned) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("configured key of notary %s is not an ed25519 key", notary.ServerName)
	}
	var out []gomatrixserverlib.ServerKeys
	for _, raw := range resp.ServerKeys {
		if err := gomatrixserverlib.VerifyJSON(notary.ServerName, gomatrixserverlib.KeyID(notary.KeyID), pinned, raw); err != nil {
			return nil, fmt.Errorf("response not signed by the notary's pinned key: %w", err)
		}
		doc, err := checkKeyDocument(server, raw, r.s.now())
		if err != nil {
			return nil, err
		}
		out = append(out, doc)
	}
	return out, nil
}

// checkKeyDocument parses a server key document and checks it names
// server, is still valid, and is signed by each of its verify_keys.
// Spec: server-server-api, "Publishing Keys".
func checkKeyDocument(server string, raw []byte, now time.Time) (gomatrixserverlib.ServerKeys, error) {
	var doc gomatrixserverlib.ServerKeys
	if err := json.Unmarshal(raw, &doc); err != nil {
		return doc, fmt.Errorf("bad key document: %w", err)
	}
	if string(doc.ServerName) != server {
		return doc, fmt.Errorf("key document names %q, not %q", doc.ServerName, server)
	}
	if !doc.ValidUntilTS.Time().After(now) {
		return doc, fmt.Errorf("key document of %s expired at %d", server, doc.ValidUntilTS)
	}
	if len(doc.VerifyKeys) == 0 {
		return doc, fmt.Errorf("key document of %s has no verify_keys", server)
	}
	for keyID, vk := range doc.VerifyKeys {
		if !strings.HasPrefix(string(keyID), "ed25519:") {
			continue
		}
		if len(vk.Key) != ed25519.PublicKeySize {
			return doc, fmt.Errorf("key %s of %s is not an ed25519 key", keyID, server)
		}
		if err := gomatrixserverlib.VerifyJSON(server, keyID, ed25519.PublicKey(vk.Key), raw); err != nil {
			return doc, fmt.Errorf("key document of %s not signed by %s: %w", server, keyID, err)
		}
	}
	return doc, nil
}

// store caches a verified key document: its current keys, its old keys,
// and the document itself for the notary endpoint.
//
// The newest document wins, key by key: a cached key is replaced only by
// a document valid until at least as late as the one it was taken from
// (document_valid_until_ts), so that an older document (a notary's
// cached copy, a fetch answered late) neither shortens a key's
// valid_until_ts, nor brings back a public key the server replaced, nor
// makes a key it moved to old_verify_keys current again.
// Spec: server-server-api, "Retrieving server keys", "Querying Keys
// Through Another Server" (notaries answer with cached responses).
//
// valid_until_ts orders a server's documents, the spec giving them no
// other order: it is when "the list of valid keys should be refreshed"
// (server-server-api, "Publishing Keys"), so a document published later
// is valid until later. It counts no further than maxKeyValidity past
// the time the document was stored, as far as a key may be trusted
// ahead whatever valid_until_ts says (server-server-api, "Publishing
// Keys": "the lesser of this field and 7 days into the future"), so a
// document valid for a year holds back the server's next ones a week at
// most. A server that shortens its valid_until_ts publishes documents
// taken for older until theirs pass that (capped) of the last one
// cached, which vouched for its keys until then anyway. Of two documents
// valid until the same time, the later stored wins, except that it never
// makes an old key current again: a retired key is refused for requests
// until a newer document says otherwise. A key the document does not
// name keeps its row.
func (r *keyRing) store(ctx context.Context, doc gomatrixserverlib.ServerKeys) error {
	now := r.s.now().UnixMilli()
	server := string(doc.ServerName)
	docValidUntil := min(int64(doc.ValidUntilTS), now+maxKeyValidity.Milliseconds())
	return r.s.db.Write(ctx, func(tx storage.Tx) error {
		upsert := func(keyID string, key spec.Base64Bytes, validUntil, expired int64) error {
			_, err := tx.Exec(ctx, `INSERT INTO federation_server_keys
					(server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts, document_valid_until_ts)
				VALUES ($1, $2, $3, $4, $5, $6, $7)
				ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = excluded.public_key,
					valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts,
					document_valid_until_ts = excluded.document_valid_until_ts
				WHERE excluded.document_valid_until_ts > federation_server_keys.document_valid_until_ts
					OR (excluded.document_valid_until_ts = federation_server_keys.document_valid_until_ts
						AND (excluded.expired_ts <> 0 OR federation_server_keys.expired_ts = 0))`,
				server, keyID, base64.RawStdEncoding.EncodeToString(key), validUntil, expired, now, docValidUntil)
			return err
		}
		for keyID, vk := range doc.VerifyKeys {
			if err := upsert(string(keyID), vk.Key, int64(doc.ValidUntilTS), 0); err != nil {
				return err
			}
		}
		for keyID, ok := range doc.OldVerifyKeys {
			if err := upsert(string(keyID), ok.Key, 0, int64(ok.ExpiredTS)); err != nil {
				return err
			}
		}
		// The document served as a notary, by the same order.
		_, err := tx.Exec(ctx, `INSERT INTO federation_key_documents (server_name, document, valid_until_ts, document_valid_until_ts)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (server_name) DO UPDATE SET document = excluded.document, valid_until_ts = excluded.valid_until_ts,
				document_valid_until_ts = excluded.document_valid_until_ts
			WHERE excluded.document_valid_until_ts >= federation_key_documents.document_valid_until_ts`,
			server, string(doc.Raw), int64(doc.ValidUntilTS), docValidUntil)
		return err
	})
}

// document returns the key document of server for the notary endpoint:
// the cached one when it is valid until at least minValidUntil (and now)
// and holds every key of keyIDs (current or old), else a fresh one
// fetched from the server. When the server cannot be reached the cached
// document is returned all the same, nil only if there is none: the
// requester judges its valid_until_ts itself.
// Spec: server-server-api, "Querying Keys Through Another Server" (keys
// SHOULD be valid until minimum_valid_until_ts; notaries answer for
// servers that are offline with cached responses; no key IDs: all keys).
func (r *keyRing) document(ctx context.Context, server string, keyIDs []string, minValidUntil int64) (json.RawMessage, error) {
	read := func() (doc json.RawMessage, enough bool, err error) {
		var raw string
		var until int64
		err = r.s.db.Reader().QueryRow(ctx, `SELECT document, valid_until_ts FROM federation_key_documents WHERE server_name = $1`,
			server).Scan(&raw, &until)
		if storage.IsNoRows(err) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		doc = json.RawMessage(raw)
		if until < minValidUntil || until <= r.s.now().UnixMilli() {
			return doc, false, nil
		}
		if len(keyIDs) > 0 {
			var keys struct {
				VerifyKeys    map[string]json.RawMessage `json:"verify_keys"`
				OldVerifyKeys map[string]json.RawMessage `json:"old_verify_keys"`
			}
			if err := json.Unmarshal(doc, &keys); err != nil {
				return nil, false, fmt.Errorf("cached key document of %s: %w", server, err)
			}
			for _, id := range keyIDs {
				if keys.VerifyKeys[id] == nil && keys.OldVerifyKeys[id] == nil {
					return doc, false, nil
				}
			}
		}
		return doc, true, nil
	}
	doc, enough, err := read()
	if err != nil || enough {
		return doc, err
	}
	if err := r.fetch(ctx, server, false, keyIDs, minValidUntil); err != nil {
		r.s.log.Debug("notary: fetching keys failed", "server", server, "err", err)
	}
	doc, _, err = read()
	return doc, err
}
