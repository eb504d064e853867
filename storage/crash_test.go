package storage_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	osexec "os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/storage"
	"github.com/myelin-chat/myelin/storage/storagetest"
)

// The crash test runs its own test binary again as a child process in
// "writer mode" (these variables set), lets it acknowledge writes, kills it
// with SIGKILL mid-stream and checks that every write the child saw
// acknowledged is in the database.
const (
	crashEngineEnv = "MYELIN_CRASH_CHILD_ENGINE" // set: this process is the child
	crashDSNEnv    = "MYELIN_CRASH_CHILD_DSN"    // SQLite path or PostgreSQL URL
	crashRoundEnv  = "MYELIN_CRASH_CHILD_ROUND"  // keeps IDs unique across rounds
)

const crashSchema = `CREATE TABLE acks (id BIGINT NOT NULL, part BIGINT NOT NULL, PRIMARY KEY (id, part))`

func TestAcknowledgedWritesSurviveCrash(t *testing.T) {
	if engine := os.Getenv(crashEngineEnv); engine != "" {
		crashChild(storage.Engine(engine), os.Getenv(crashDSNEnv), os.Getenv(crashRoundEnv))
		return // not reached: the child runs until killed
	}
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	for _, engine := range []storage.Engine{storage.SQLite, storage.Postgres} {
		t.Run(string(engine), func(t *testing.T) {
			var opts storage.Options
			var dsn string
			rounds := 5
			if engine == storage.SQLite {
				opts = storagetest.SQLiteOptions(t)
				dsn = opts.SQLitePath
			} else {
				opts = storagetest.PostgresOptions(t) // skips without MYELIN_TEST_POSTGRES
				dsn = opts.PostgresURL
				rounds = 2
			}
			db, err := storage.Open(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			exec(t, db, crashSchema)
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			for round := 1; round <= rounds; round++ {
				crashRound(t, opts, dsn, round)
			}
		})
	}
}

// crashRound runs one child, kills it after a random number of
// acknowledgements and checks the database.
func crashRound(t *testing.T, opts storage.Options, dsn string, round int) {
	cmd := osexec.Command(os.Args[0], "-test.run=^TestAcknowledgedWritesSurviveCrash$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(),
		crashEngineEnv+"="+string(opts.Engine),
		crashDSNEnv+"="+dsn,
		crashRoundEnv+"="+strconv.Itoa(round))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killAfter := 50 + rand.IntN(500)
	var acked []int64
	killed := false
	scanner := bufio.NewScanner(stdout)
	for scanner.Scan() {
		// A complete line is "ack <id> ok"; anything else (a torn last
		// line, test framework output) is not an acknowledgement.
		var id int64
		if n, _ := fmt.Sscanf(scanner.Text(), "ack %d ok", &id); n != 1 || !strings.HasSuffix(scanner.Text(), " ok") {
			continue
		}
		acked = append(acked, id)
		if len(acked) == killAfter && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	// Acknowledgements read after the kill was sent still count: the child
	// printed them, so it saw those writes commit.
	err = cmd.Wait()
	if !killed {
		t.Fatalf("round %d: child exited (%v) after %d acknowledgements, before it was killed", round, err, len(acked))
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: child ended with %v, want killed by SIGKILL", round, cmd.ProcessState)
	}

	db, err := storage.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("round %d: reopening after the crash: %v", round, err)
	}
	defer db.Close()
	parts := map[int64]int{}
	rows := int64s(t, db.Reader(), `SELECT id FROM acks WHERE id / 1000000000 = $1`, round)
	for _, id := range rows {
		parts[id]++
	}
	for _, id := range acked {
		if parts[id] != 2 {
			t.Errorf("round %d: acknowledged write %d has %d of its 2 rows after the crash", round, id, parts[id])
		}
	}
	for id, n := range parts {
		if n != 2 {
			t.Errorf("round %d: write %d is torn: %d of its 2 rows", round, id, n)
		}
	}
	t.Logf("round %d: killed after %d acknowledgements (%d read in all); %d writes in the database",
		round, killAfter, len(acked), len(parts))
}

// crashChild writes from several goroutines until killed, printing each
// write's ID once Write has returned nil.
func crashChild(engine storage.Engine, dsn, round string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	r, err := strconv.ParseInt(round, 10, 64)
	if err != nil {
		fail(err)
	}
	opts := storage.Options{Engine: engine, SQLitePath: dsn}
	if engine == storage.Postgres {
		opts = storage.Options{Engine: engine, PostgresURL: dsn}
	}
	ctx := context.Background()
	db, err := storage.Open(ctx, opts)
	if err != nil {
		fail(err)
	}
	var outMu sync.Mutex
	const writers = 4
	for w := range writers {
		go func() {
			for i := int64(0); ; i++ {
				id := r*1_000_000_000 + int64(w)*100_000_000 + i
				err := db.Write(ctx, func(tx storage.Tx) error {
					for part := 1; part <= 2; part++ {
						if _, err := tx.Exec(ctx, `INSERT INTO acks (id, part) VALUES ($1, $2)`, id, part); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					fail(err)
				}
				// os.Stdout is unbuffered: the line is in the pipe when
				// Write returns, and one small write to a pipe is atomic.
				outMu.Lock()
				_, err = os.Stdout.WriteString("ack " + strconv.FormatInt(id, 10) + " ok\n")
				outMu.Unlock()
				if err != nil {
					fail(err)
				}
			}
		}()
	}
	time.Sleep(2 * time.Minute) // the parent kills us long before this
	fail(fmt.Errorf("not killed"))
}
