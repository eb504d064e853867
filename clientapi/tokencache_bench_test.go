package clientapi_test

import (
	"context"
	"net/http"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// BenchmarkVerifyAccessToken measures the access-token check of a
// request on SQLite: "hit" a token the cache holds (the normal case of a
// client polling /sync), "miss" the same token with the cache emptied
// before each check (the session read).
func BenchmarkVerifyAccessToken(b *testing.B) {
	srv := testserver.Start(b, storage.SQLite, nil)
	cli, err := mautrix.NewClient(srv.URL, "", "")
	if err != nil {
		b.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: "bench", Password: testPassword})
	if err != nil {
		b.Fatal(err)
	}
	token := resp.AccessToken
	req, _ := http.NewRequest("GET", srv.URL+"/_matrix/client/v3/sync", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	verifier := srv.HS.ClientAPI
	ctx := context.Background()
	if _, err := verifier.VerifyAccessToken(ctx, token, req); err != nil {
		b.Fatal(err)
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := verifier.VerifyAccessToken(ctx, token, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			verifier.DropTokenCache()
			if _, err := verifier.VerifyAccessToken(ctx, token, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}
