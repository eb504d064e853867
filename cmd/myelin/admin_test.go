package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"maunium.net/go/mautrix"

	"github.com/myelin-chat/myelin/config"
	"github.com/myelin-chat/myelin/internal/testserver"
	"github.com/myelin-chat/myelin/storage"
)

// writeConfig writes a config whose SQLite database lives in a temp dir.
func writeConfig(t *testing.T) (configPath, dbPath string) {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.Global.ServerName = "localhost"
	cfg.Global.DataDir = dir
	cfg.Global.SigningKeyPath = filepath.Join(dir, "signing.key")
	dbPath = filepath.Join(dir, "myelin.db")
	cfg.Database = config.Database{Engine: "sqlite", SQLitePath: dbPath}
	configPath = filepath.Join(dir, "myelin.yaml")
	if err := os.WriteFile(configPath, config.Sample(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return configPath, dbPath
}

func runCLI(t *testing.T, input string, args ...string) (string, error) {
	t.Helper()
	stdin = strings.NewReader(input)
	t.Cleanup(func() { stdin = os.Stdin })
	var stdout, stderr bytes.Buffer
	err := run(args, &stdout, &stderr)
	if strings.Contains(stdout.String()+stderr.String(), "s3cret-password") {
		t.Fatalf("a password was printed: %q %q", stdout.String(), stderr.String())
	}
	return stdout.String(), err
}

func TestUserAndTokenCommands(t *testing.T) {
	configPath, dbPath := writeConfig(t)
	out, err := runCLI(t, "", "user", "create", "-config", configPath, "-admin", "-password", "s3cret-password", "Admin")
	if err != nil || strings.TrimSpace(out) != "@admin:localhost" {
		t.Fatalf("user create: %q %v", out, err)
	}
	// Password from stdin; flags after the localpart.
	out, err = runCLI(t, "s3cret-password\n", "user", "create", "bob", "-config", configPath)
	if err != nil || strings.TrimSpace(out) != "@bob:localhost" {
		t.Fatalf("user create with prompt: %q %v", out, err)
	}
	if _, err := runCLI(t, "", "user", "create", "-config", configPath, "-password", "s3cret-password", "bob"); err == nil || !strings.Contains(err.Error(), "M_USER_IN_USE") {
		t.Fatalf("duplicate user: %v", err)
	}
	if _, err := runCLI(t, "", "user", "create", "-config", configPath, "-password", "short", "carol"); err == nil || !strings.Contains(err.Error(), "M_WEAK_PASSWORD") {
		t.Fatalf("weak password: %v", err)
	}
	if _, err := runCLI(t, "", "user", "create", "-config", configPath, "-password", "s3cret-password", "bad!name"); err == nil || !strings.Contains(err.Error(), "M_INVALID_USERNAME") {
		t.Fatalf("invalid username: %v", err)
	}
	if _, err := runCLI(t, "", "user", "frobnicate", "-config", configPath); err == nil {
		t.Fatal("unknown subcommand must fail")
	}
	out, err = runCLI(t, "", "user", "list", "-config", configPath)
	if err != nil || !strings.Contains(out, "@admin:localhost  true") || !strings.Contains(out, "@bob:localhost") {
		t.Fatalf("user list: %q %v", out, err)
	}

	out, err = runCLI(t, "", "token", "create", "-config", configPath, "-uses", "1", "-expires", "24h")
	token := strings.TrimSpace(out)
	if err != nil || len(token) != 16 {
		t.Fatalf("token create: %q %v", out, err)
	}
	if out, err := runCLI(t, "", "token", "create", "-config", configPath, "-token", "chosen-token"); err != nil || strings.TrimSpace(out) != "chosen-token" {
		t.Fatalf("token create -token: %q %v", out, err)
	}
	if _, err := runCLI(t, "", "token", "create", "-config", configPath, "-token", "no spaces"); err == nil {
		t.Fatal("a token outside the opaque identifier grammar must be refused")
	}
	out, err = runCLI(t, "", "token", "list", "-config", configPath)
	if err != nil || !strings.Contains(out, token) || !strings.Contains(out, "chosen-token      unlimited") {
		t.Fatalf("token list: %q %v", out, err)
	}
	if _, err := runCLI(t, "", "token", "revoke", "-config", configPath, "chosen-token"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "", "token", "revoke", "-config", configPath, "chosen-token"); err == nil {
		t.Fatal("revoking a revoked token must fail")
	}
	if out, _ := runCLI(t, "", "token", "list", "-config", configPath); strings.Contains(out, "chosen-token") {
		t.Fatalf("revoked token still listed: %q", out)
	}

	// The server, started on the same database, honours what the CLI did.
	srv := testserver.Start(t, storage.SQLite, func(c *config.Config) {
		c.Database.SQLitePath = dbPath
		c.ClientAPI.Registration = "token"
	})
	ctx := context.Background()
	login := func(user, password string) (*mautrix.RespLogin, error) {
		cli, _ := mautrix.NewClient(srv.URL, "", "")
		return cli.Login(ctx, &mautrix.ReqLogin{
			Type: mautrix.AuthTypePassword, Password: password,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user},
		})
	}
	bob, err := login("bob", "s3cret-password")
	if err != nil {
		t.Fatalf("login as a CLI-created user: %v", err)
	}
	cli, _ := mautrix.NewClient(srv.URL, "", "")
	resp, _, err := cli.Register(ctx, &mautrix.ReqRegister[any]{Username: "dave", Password: "s3cret-password",
		Auth: map[string]any{"type": "m.login.registration_token", "token": token}})
	if err != nil || resp.UserID != "@dave:localhost" {
		t.Fatalf("registration with a CLI token: %+v %v", resp, err)
	}

	// passwd logs the user out everywhere; deactivate blocks login. Each
	// takes effect for the server's very next request, although the
	// token was just used (and so is in the server's token cache).
	bobCli, _ := mautrix.NewClient(srv.URL, bob.UserID, bob.AccessToken)
	if _, err := bobCli.Whoami(ctx); err != nil {
		t.Fatalf("token before user passwd: %v", err)
	}
	if _, err := runCLI(t, "another-s3cret\n", "user", "passwd", "-config", configPath, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bobCli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("token after user passwd: %v", err)
	}
	bob, err = login("bob", "another-s3cret")
	if err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	bobCli, _ = mautrix.NewClient(srv.URL, bob.UserID, bob.AccessToken)
	if _, err := bobCli.Whoami(ctx); err != nil {
		t.Fatalf("token before user deactivate: %v", err)
	}
	if _, err := runCLI(t, "", "user", "deactivate", "-config", configPath, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := bobCli.Whoami(ctx); !errors.Is(err, mautrix.MUnknownToken) {
		t.Fatalf("token after user deactivate: %v", err)
	}
	if _, err := login("bob", "another-s3cret"); !errors.Is(err, mautrix.MUserDeactivated) {
		t.Fatalf("login after user deactivate: %v", err)
	}
	if _, err := runCLI(t, "", "user", "deactivate", "-config", configPath, "nobody"); err == nil {
		t.Fatal("deactivating an unknown user must fail")
	}
}
