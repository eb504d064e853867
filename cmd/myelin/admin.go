package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
	"github.com/myelin-chat/myelin/internal/homeserver"
	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/syncapi"
)

// stdin is where password prompts read from (replaced in tests).
var stdin io.Reader = os.Stdin

// runUser manages accounts directly in the database; the server may be
// stopped (or running: SQLite's WAL and PostgreSQL both allow it).
//
//	myelin user create [-config f] [-admin] [-password p] <localpart>
//	myelin user passwd [-config f] [-password p] <localpart>
//	myelin user deactivate [-config f] <localpart>
//	myelin user list [-config f]
func runUser(args []string, stdout, stderr io.Writer) error {
	const usage = "usage: myelin user create|passwd|deactivate|list [-config myelin.yaml] [flags] [localpart]"
	if len(args) == 0 {
		return errors.New(usage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("user "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "myelin.yaml", "config file")
	var admin *bool
	var password *string
	switch sub {
	case "create":
		admin = fs.Bool("admin", false, "make the user a server administrator")
		password = fs.String("password", "", "the password (prompted for on stdin when absent)")
	case "passwd":
		password = fs.String("password", "", "the new password (prompted for on stdin when absent)")
	case "deactivate", "list":
	default:
		return fmt.Errorf("unknown user command %q; %s", sub, usage)
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	wantArgs := 1
	if sub == "list" {
		wantArgs = 0
	}
	if len(positional) != wantArgs {
		return errors.New(usage)
	}
	ctx := context.Background()
	accounts, closeDB, err := openAccounts(ctx, *configPath, stdout)
	if err != nil {
		return err
	}
	defer closeDB()
	switch sub {
	case "create":
		pw, err := passwordFrom(*password, stderr)
		if err != nil {
			return err
		}
		userID, err := accounts.CreateUser(ctx, positional[0], pw, *admin)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, userID)
	case "passwd":
		pw, err := passwordFrom(*password, stderr)
		if err != nil {
			return err
		}
		if err := accounts.SetPassword(ctx, positional[0], pw); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Password changed for %s; all of its devices were logged out.\n", positional[0])
	case "deactivate":
		if err := accounts.Deactivate(ctx, positional[0]); err != nil {
			return err
		}
		// Leaving its rooms needs the server (its per-room writers and
		// federation sender): queued for it (clientapi deactivation.go).
		fmt.Fprintf(stdout, "Deactivated %s; all of its tokens were revoked. A running server leaves its rooms within a minute, a stopped one when it starts.\n", positional[0])
	case "list":
		users, err := accounts.Users(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tADMIN\tGUEST\tDEACTIVATED\tCREATED")
		for _, u := range users {
			fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%s\n", u.UserID, u.Admin, u.Guest, u.Deactivated, u.Created.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return nil
}

// runToken manages registration tokens.
//
//	myelin token create [-config f] [-uses N] [-expires 24h] [-token value]
//	myelin token list [-config f]
//	myelin token revoke [-config f] <token>
func runToken(args []string, stdout, stderr io.Writer) error {
	const usage = "usage: myelin token create|list|revoke [-config myelin.yaml] [flags] [token]"
	if len(args) == 0 {
		return errors.New(usage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "myelin.yaml", "config file")
	var (
		uses    *int64
		expires *time.Duration
		value   *string
	)
	wantArgs := 0
	switch sub {
	case "create":
		uses = fs.Int64("uses", 0, "how many registrations the token allows (0: unlimited)")
		expires = fs.Duration("expires", 0, "how long the token stays valid, e.g. 24h (0: forever)")
		value = fs.String("token", "", "the token text (generated when absent; A-Z a-z 0-9 . _ ~ -, at most 64)")
	case "list":
	case "revoke":
		wantArgs = 1
	default:
		return fmt.Errorf("unknown token command %q; %s", sub, usage)
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != wantArgs {
		return errors.New(usage)
	}
	ctx := context.Background()
	accounts, closeDB, err := openAccounts(ctx, *configPath, stdout)
	if err != nil {
		return err
	}
	defer closeDB()
	switch sub {
	case "create":
		if *uses < 0 || *expires < 0 {
			return errors.New("-uses and -expires must not be negative")
		}
		var usesAllowed *int64
		if *uses > 0 {
			usesAllowed = uses
		}
		var until time.Time
		if *expires > 0 {
			until = time.Now().Add(*expires)
		}
		tok, err := accounts.CreateRegistrationToken(ctx, *value, usesAllowed, until)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok.Token)
	case "list":
		tokens, err := accounts.RegistrationTokens(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TOKEN\tUSES\tPENDING\tCOMPLETED\tEXPIRES\tVALID")
		for _, t := range tokens {
			usesText, expiresText := "unlimited", "never"
			if t.UsesAllowed != nil {
				usesText = strconv.FormatInt(*t.UsesAllowed, 10)
			}
			if !t.Expires.IsZero() {
				expiresText = t.Expires.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%v\n", t.Token, usesText, t.Pending, t.Completed, expiresText, t.Valid(now))
		}
		return tw.Flush()
	case "revoke":
		if err := accounts.RevokeRegistrationToken(ctx, positional[0]); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "Revoked.")
	}
	return nil
}

// parseInterspersed parses flags that may come before or after the
// positional arguments, returning the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// openAccounts opens the database the config names and the account store
// on it (running migrations), without starting a server.
func openAccounts(ctx context.Context, configPath string, stdout io.Writer) (*clientapi.Accounts, func(), error) {
	cfg, err := loadConfig(configPath, false, stdout)
	if err != nil {
		return nil, nil, err
	}
	db, err := storage.Open(ctx, homeserver.StorageOptions(cfg.Database))
	if err != nil {
		return nil, nil, err
	}
	accounts, err := clientapi.OpenAccounts(ctx, cfg, db)
	if err == nil {
		err = homeserver.MigrateDevicesDeletedTables(ctx, db)
	}
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	// Deleting devices (passwd logs them out, deactivate deletes them)
	// runs the server's hook in the same transaction: their keys,
	// to-device inbox and pushers go and a device-list change is
	// recorded. No one here to notify: a running server reads the
	// change from the database (see docs/features.md, admin CLI).
	hook := homeserver.DevicesDeletedHook(db, nil, nil)
	closeAll := func() { db.Close() }
	if cfg.Global.RedisURL != "" {
		// Split mode: the devices' sliding sync connections are in
		// Redis, dropped once the deletion commits (a single server's,
		// in its memory, are dropped when a device of the ID is created
		// again).
		conns, err := syncapi.NewRedisSlidingConns(cfg.Global.RedisURL, cfg.Global.RedisPrefix)
		if err != nil {
			db.Close()
			return nil, nil, err
		}
		deleted := hook
		hook = func(ctx context.Context, tx storage.Tx, userID string, deviceIDs []string) error {
			if err := deleted(ctx, tx, userID, deviceIDs); err != nil {
				return err
			}
			tx.AfterCommit(func() {
				if err := conns.DropDeviceConns(ctx, userID, deviceIDs...); err != nil {
					fmt.Fprintf(stdout, "Warning: %v; they expire within the hour.\n", err)
				}
			})
			return nil
		}
		closeAll = func() { conns.Close(); db.Close() }
	}
	accounts.SetDevicesDeletedHook(hook)
	return accounts, closeAll, nil
}

// passwordFrom returns the flag's password, or reads one line from stdin
// (prompting on stderr). The password is never echoed or logged.
func passwordFrom(flagValue string, stderr io.Writer) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	fmt.Fprint(stderr, "Password: ")
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the password from stdin: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("the password is empty")
	}
	return pw, nil
}
