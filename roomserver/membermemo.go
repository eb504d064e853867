package roomserver

import (
	"context"
	"hash/fnv"
	"slices"
	"strings"
	"sync"

	"github.com/myelin-chat/myelin/storage"
)

// memberMemo remembers, per room, which event each asked m.room.member
// state key has in the current state (roomserver_current_state), or
// that it has none, so that IndexedStateKeys(room, "m.room.member",
// keys) — the lazy-loaded members of every woken /sync response — is
// answered without reading the table when every key is known. The
// events themselves still come through the event cache (loadEvents).
//
// Exact by construction: every write of roomserver_current_state
// (updateCurrentState, moveEventNID) calls forgetMembersAt, whose
// OnCommit hook, run right after the commit on the committing goroutine
// and before the write is acknowledged or notified, bumps the room's
// generation and drops the room's entries. A read stores its answer
// only if the room's generation is the one it took before its
// transaction began, so an answer read from a snapshot older than a
// commit is never stored once that commit's hook has run, and one
// stored before the hook ran is dropped by it. A rolled-back write runs
// no hook and changed nothing. Between a commit and its hook a reader
// may still be answered the state from just before the commit, as the
// event cache may serve a row from just before it: no one has been told
// of the commit yet.
//
// Off in split mode (Deps.Shared: other processes write the table and
// run no hook here), and on PostgreSQL unless state_key sorts by bytes
// (memberMemoUsable): an answer from the memo is sorted here, and must
// come in the order the table's ORDER BY state_key gives.
//
// Bound: at most maxMemberMemoEntries keys in all (about 100 bytes each
// with the map's overhead, so ~1.6 MiB); past it the memo is emptied,
// as the snapshot key cache is.
type memberMemo struct {
	mu sync.Mutex
	// gens are the rooms' generations, striped by room ID hash (guarded
	// by mu): two rooms sharing a stripe only make each other's reads
	// store less.
	gens [256]uint64
	// rooms maps room ID → state key → event NID of that key's current
	// m.room.member entry, 0 when the key has none (guarded by mu).
	rooms   map[string]map[string]int64
	entries int // keys held in rooms (guarded by mu)

	// beforeStore, when set (tests only), runs between a read from the
	// table and the store of its answer.
	beforeStore func()

	// usable is decided once (memberMemoUsable).
	once   sync.Once
	usable bool
}

// maxMemberMemoEntries bounds the keys the memo holds in all.
const maxMemberMemoEntries = 16 << 10

func newMemberMemo() *memberMemo {
	return &memberMemo{rooms: map[string]map[string]int64{}}
}

func memberMemoStripe(roomID string) int {
	h := fnv.New32a()
	h.Write([]byte(roomID))
	return int(h.Sum32() % 256)
}

// generation is roomID's generation: take it before a read's
// transaction begins and hand it to store.
func (m *memberMemo) generation(roomID string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gens[memberMemoStripe(roomID)]
}

// lookup returns the event NIDs of keys' current member entries in state
// key order (bytewise, each key once, absent keys left out) if every key
// is known, and roomID's generation at the lookup.
func (m *memberMemo) lookup(roomID string, keys []string) (nids []int64, gen uint64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gen = m.gens[memberMemoStripe(roomID)]
	room := m.rooms[roomID]
	if room == nil {
		return nil, gen, false
	}
	type hit struct {
		key string
		nid int64
	}
	hits := make([]hit, 0, len(keys))
	for _, k := range keys {
		nid, known := room[k]
		if !known {
			return nil, gen, false
		}
		if nid != 0 {
			hits = append(hits, hit{k, nid})
		}
	}
	slices.SortFunc(hits, func(a, b hit) int { return strings.Compare(a.key, b.key) })
	hits = slices.CompactFunc(hits, func(a, b hit) bool { return a.key == b.key })
	nids = make([]int64, len(hits))
	for i, h := range hits {
		nids[i] = h.nid
	}
	return nids, gen, true
}

// store records that, in the current state read by a transaction begun
// at generation gen, each of keys has the member entry found[key] (none
// when missing). Nothing is stored if roomID's generation moved since.
func (m *memberMemo) store(roomID string, gen uint64, keys []string, found map[string]int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gens[memberMemoStripe(roomID)] != gen {
		return
	}
	if m.entries+len(keys) > maxMemberMemoEntries {
		m.rooms = map[string]map[string]int64{}
		m.entries = 0
		if len(keys) > maxMemberMemoEntries {
			return
		}
	}
	room := m.rooms[roomID]
	if room == nil {
		room = make(map[string]int64, len(keys))
		m.rooms[roomID] = room
	}
	for _, k := range keys {
		if _, had := room[k]; !had {
			m.entries++
		}
		// Cloned: a key is often a slice of a request's JSON, which the
		// memo must not keep alive.
		room[strings.Clone(k)] = found[k]
	}
}

// forget bumps roomID's generation and drops its entries.
func (m *memberMemo) forget(roomID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gens[memberMemoStripe(roomID)]++
	m.entries -= len(m.rooms[roomID])
	delete(m.rooms, roomID)
}

// forgetMembersAt makes the member memo forget roomID when tx commits:
// call it from every write of roomserver_current_state.
func (s *Server) forgetMembersAt(tx storage.Tx, roomID string) {
	tx.OnCommit(func() { s.members.forget(roomID) })
}

// memberMemoUsable says whether the memo may answer: not in split mode,
// and on PostgreSQL only when roomserver_current_state.state_key sorts
// bytewise (collation C, POSIX or C.UTF-8 under libc, or ucs_basic),
// the order lookup gives. Decided on first use; a failed check leaves
// the memo off.
func (s *Server) memberMemoUsable(ctx context.Context) bool {
	if s.shared {
		return false
	}
	m := s.members
	m.once.Do(func() {
		if s.db.Engine() != storage.Postgres {
			m.usable = true // SQLite: BINARY collation, bytewise
			return
		}
		var coll, dbColl, provider string
		err := s.db.Reader().QueryRow(context.WithoutCancel(ctx), `SELECT c.collname, d.datcollate, d.datlocprovider::text
			FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation, pg_database d
			WHERE a.attrelid = 'roomserver_current_state'::regclass AND a.attname = 'state_key'
			AND d.datname = current_database()`).Scan(&coll, &dbColl, &provider)
		if err != nil {
			return
		}
		if coll == "default" {
			coll = dbColl
			if provider != "c" { // ICU or another provider
				return
			}
		}
		switch coll {
		case "C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic":
			m.usable = true
		}
	})
	return m.usable
}

// memberEvents is IndexedStateKeys for m.room.member, through the memo.
func (s *Server) memberEvents(ctx context.Context, roomID string, stateKeys []string) ([]*Event, error) {
	if nids, gen, ok := s.members.lookup(roomID, stateKeys); ok {
		var out []*Event
		err := s.read(ctx, func(q storage.Querier) error {
			var err error
			out, err = s.eventsOfNIDs(ctx, q, roomID, nids)
			return err
		})
		// A commit that changed the room's state since the lookup (say
		// an outlier promotion moving a NID) makes the answer be read
		// again from the table, as does a failed load.
		if err == nil && s.members.generation(roomID) == gen {
			return out, nil
		}
	}
	gen := s.members.generation(roomID)
	in, keyArgs := storage.InList("", stateKeys)
	args := append([]any{roomID}, keyArgs...)
	var out []*Event
	found := make(map[string]int64, len(stateKeys))
	err := s.read(ctx, func(q storage.Querier) error {
		rows, err := q.Query(ctx, `SELECT state_key, event_nid FROM roomserver_current_state
			WHERE room_id = $1 AND type = 'm.room.member' AND state_key IN `+shiftPlaceholders(in, 1)+` ORDER BY state_key`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		var nids []int64
		for rows.Next() {
			var key string
			var nid int64
			if err := rows.Scan(&key, &nid); err != nil {
				return err
			}
			found[key] = nid
			nids = append(nids, nid)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		out, err = s.eventsOfNIDs(ctx, q, roomID, nids)
		return err
	})
	if err != nil {
		return nil, err
	}
	if s.members.beforeStore != nil {
		s.members.beforeStore()
	}
	s.members.store(roomID, gen, stateKeys, found)
	return out, nil
}
