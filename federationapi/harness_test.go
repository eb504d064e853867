package federationapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/internal/signing"
	"github.com/myelin-chat/myelin/internal/tlscert"
	"github.com/myelin-chat/myelin/roomserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// Tests run in parallel (t.Parallel) unless they set a hook of every
// server of the process (ObserveResyncs, SetPendingLimits) or assert on
// wall time: each server listens on a port of its own and has a database
// (SQLite file, PostgreSQL schema) and Redis prefix of its own.

// network is a private federation: one test CA that every server's
// certificate comes from and every server trusts.
type network struct {
	t              testing.TB
	caCert, caKey  string
	ca             *tlscert.CA
	pool           *x509.CertPool
	engine         storage.Engine
	trustedNotary  []string
	editEachConfig func(*config.Config)
	// wrapListener, if set, wraps each server's federation listener
	// (partition_test.go cuts links with it).
	wrapListener func(*fedServer, net.Listener) net.Listener
}

func newNetwork(t testing.TB, engine storage.Engine) *network {
	dir := t.TempDir()
	pair, err := tlscert.NewCA("Myelin federation test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	n := &network{t: t, caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"), engine: engine}
	if err := pair.Write(n.caCert, n.caKey); err != nil {
		t.Fatal(err)
	}
	if n.ca, err = tlscert.LoadCA(pair.CertPEM, pair.KeyPEM); err != nil {
		t.Fatal(err)
	}
	n.pool = x509.NewCertPool()
	n.pool.AppendCertsFromPEM(pair.CertPEM)
	return n
}

// fedServer is one Myelin server of the network, named localhost:PORT.
type fedServer struct {
	n      *network
	Name   string
	HS     *homeserver.Homeserver
	cfg    config.Config
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func (n *network) start() *fedServer {
	n.t.Helper()
	cfg, ln := n.newConfig()
	return n.startWith(cfg, ln)
}

// newConfig returns the config of a new server of n and the listener it
// is to serve on (startWith).
func (n *network) newConfig() (config.Config, net.Listener) {
	t := n.t
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.Global.ServerName = "localhost:" + strconv.Itoa(port)
	cfg.Global.DataDir = dir
	cfg.Global.SigningKeyPath = filepath.Join(dir, "signing.key")
	cfg.ClientAPI.Registration = "open"
	cfg.ClientAPI.RateLimits.Enabled = false
	cfg.HTTP.ShutdownTimeout = config.Duration(2 * time.Second)
	cfg.RoomServer.DefaultRoomVersion = "12"
	cfg.Federation = config.Federation{}.Defaults()
	cfg.Federation.Enabled = true
	cfg.Federation.Listen = ln.Addr().String()
	cfg.Federation.TLSCert = filepath.Join(dir, "fed.crt")
	cfg.Federation.TLSKey = filepath.Join(dir, "fed.key")
	cfg.Federation.TLSCACert = n.caCert
	cfg.Federation.TLSCAKey = n.caKey
	cfg.Federation.TrustedCAFile = n.caCert
	cfg.Federation.MinBackoff = config.Duration(200 * time.Millisecond)
	cfg.Federation.MaxBackoff = config.Duration(time.Second)
	cfg.Federation.TrustedKeyServers = n.trustedNotary
	if n.engine == storage.Postgres {
		opts := storagetest.PostgresOptions(t)
		cfg.Database = config.Database{Engine: "postgres", PostgresURL: opts.PostgresURL, MaxOpenConns: 8}
	} else {
		cfg.Database = config.Database{Engine: "sqlite", SQLitePath: filepath.Join(dir, "myelin.db")}
	}
	if n.editEachConfig != nil {
		n.editEachConfig(&cfg)
	}
	return cfg, ln
}

// startWith starts a server of n on cfg, serving ln (newConfig).
func (n *network) startWith(cfg config.Config, ln net.Listener) *fedServer {
	t := n.t
	t.Helper()
	s := &fedServer{n: n, Name: cfg.Global.ServerName, cfg: cfg, addr: ln.Addr().String()}
	s.run(ln)
	t.Cleanup(s.stop)
	return s
}

func (s *fedServer) run(ln net.Listener) {
	t := s.n.t
	if s.n.wrapListener != nil {
		ln = s.n.wrapListener(s, ln)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("MYELIN_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("server", s.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := s.cfg
	hs, err := homeserver.New(ctx, &cfg, logger)
	if err != nil {
		cancel()
		t.Fatalf("starting %s: %v", s.Name, err)
	}
	s.HS, s.cancel, s.done = hs, cancel, make(chan error, 1)
	go func() { s.done <- hs.ServeFederation(ctx, ln) }()
}

// stop shuts the server down (idempotent).
func (s *fedServer) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
	s.HS.Close()
	s.cancel = nil
}

// restart starts the server again on the same port, key and database.
func (s *fedServer) restart() {
	s.stop()
	var ln net.Listener
	var err error
	for i := 0; i < 200; i++ {
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.n.t.Fatal(err)
	}
	s.run(ln)
}

func (s *fedServer) user(local string) string { return "@" + local + ":" + s.Name }

// httpClient trusts the network's CA.
func (n *network) httpClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.pool}}}
}

// request sends a federation request to s signed as origin with key
// (key nil: unsigned) and returns status and body.
func (n *network) request(s *fedServer, origin string, key *signing.Key, destination, method, uri string, body any) (int, []byte) {
	t := n.t
	t.Helper()
	fr := fclient.NewFederationRequest(method, spec.ServerName(origin), spec.ServerName(destination), uri)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			t.Fatal(err)
		}
	}
	if key != nil {
		if err := fr.Sign(spec.ServerName(origin), gomatrixserverlib.KeyID(key.ID), key.PrivateKey); err != nil {
			t.Fatal(err)
		}
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Scheme, req.URL.Host = "https", s.Name
	resp, err := n.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// hasEvent reports whether userID on s can see eventID.
func hasEvent(s *fedServer, userID, eventID string) bool {
	_, err := s.HS.Rooms.Event(context.Background(), userID, eventID)
	return err == nil
}

// isRejected reports whether s stored eventID as rejected: known, yet
// not served (a rejected event has no place in the room).
func isRejected(s *fedServer, eventID string) bool {
	ctx := context.Background()
	unknown, err := s.HS.Rooms.UnknownEvents(ctx, []string{eventID})
	if err != nil || len(unknown) != 0 {
		return false
	}
	_, _, err = s.HS.Rooms.FederationEvent(ctx, eventID)
	return err != nil
}

// publicRoom makes a public room on s created by local user.
func publicRoom(t testing.TB, s *fedServer, creator string) string {
	t.Helper()
	resp, err := s.HS.Rooms.CreateRoom(context.Background(), roomserver.CreateRoomRequest{
		Creator: creator, Preset: "public_chat", Visibility: "public", Name: "federated",
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.RoomID
}

func sendText(t testing.TB, s *fedServer, roomID, sender, text string) string {
	t.Helper()
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": text})
	resp, err := s.HS.Rooms.SendEvent(context.Background(), roomserver.SendEventRequest{
		RoomID: roomID, Sender: sender, Type: "m.room.message", Content: content,
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.EventID
}

// buildPDU builds an event in roomID from the current state on s, signed
// by signer's key as signerName; edit may change the proto event first.
func buildPDU(t testing.TB, s *fedServer, roomID, sender, eventType string, stateKey *string, content any, signerName string, key *signing.Key, edit func(*gomatrixserverlib.ProtoEvent)) gomatrixserverlib.PDU {
	t.Helper()
	ctx := context.Background()
	version, err := s.HS.Rooms.RoomVersion(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	impl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
	var state []gomatrixserverlib.PDU
	evs, err := s.HS.Rooms.CurrentState(ctx, firstJoined(t, s, roomID), roomID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		pdu, err := impl.NewEventFromTrustedJSONWithEventID(e.EventID, e.JSON, false)
		if err != nil {
			t.Fatal(err)
		}
		state = append(state, pdu)
	}
	ext, err := s.HS.Rooms.Extremities(ctx, roomID)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(content)
	var maxDepth int64
	for _, id := range ext {
		ev, _, err := s.HS.Rooms.FederationEvent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		maxDepth = max(maxDepth, ev.Depth)
	}
	proto := &gomatrixserverlib.ProtoEvent{SenderID: sender, RoomID: roomID, Type: eventType, StateKey: stateKey,
		Content: raw, PrevEvents: ext, Depth: maxDepth + 1, Version: impl}
	if edit != nil {
		edit(proto)
	}
	eb := impl.NewEventBuilderFromProtoEvent(proto)
	provider, err := gomatrixserverlib.NewAuthEvents(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := eb.AddAuthEvents(provider); err != nil {
		t.Fatal(err)
	}
	pdu, err := eb.Build(time.Now(), spec.ServerName(signerName), gomatrixserverlib.KeyID(key.ID), key.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return pdu
}

func firstJoined(t testing.TB, s *fedServer, roomID string) string {
	t.Helper()
	ev, err := s.HS.Rooms.RoomStateEvent(context.Background(), roomID, "m.room.create", "")
	if err != nil {
		t.Fatal(err)
	}
	return ev.Sender
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var _ = bytes.NewReader

func pathEscape(s string) string { return url.PathEscape(s) }

func unescape(s string) (string, error) { return url.PathUnescape(s) }

func tlsKeyPair(certPEM, keyPEM []byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, nil
}
