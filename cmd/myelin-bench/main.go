// Command myelin-bench measures a Matrix homeserver — any homeserver, by its
// base URL — over the client-server API.
//
//	myelin-bench <scenario> -url http://127.0.0.1:8008 [flags]
//	myelin-bench report -column Name=results.jsonl ...   # markdown tables from -json output
//
// Scenarios:
//
//	register     N registrations (-n, -concurrency)
//	rooms        N room creations (-n, -concurrency)
//	send         -messages sent by -concurrency senders, each in its own room
//	             or all in one (-same-room); closed loop, or open loop with -rate
//	fanout       one room, -listeners users long-polling /sync with a filter,
//	             one sender; latency from send to delivery at every listener
//	initialsync  a user in -rooms rooms with -per-room messages each; times a
//	             full initial /sync (-repeat times); the first (the user's
//	             first, caches cold) is also reported apart, as first_ms
//
// Users are created with open registration (-auth dummy: the m.login.dummy
// UIA flow) or shared-secret registration (-auth shared-secret -secret S).
// Every run registers fresh users under a random prefix, so runs do not
// collide on one server.
//
// Latencies are reported as nearest-rank percentiles (p50, p90, p99, p99.9)
// and the maximum. In open-loop mode (-rate) requests follow a fixed
// schedule and latency is measured from the scheduled time, so a server
// that stalls is charged for the requests that queued behind the stall
// (no coordinated omission). With -pid the server's CPU seconds
// (utime+stime), resident memory and peak resident memory (VmHWM) are read
// from /proc around the measured phase, together with the whole machine's
// busy CPU time, so that load from other processes is visible.
//
// -json prints one JSON object per run on stdout (the human summary then
// goes to stderr). The exit status is 0 when at least one operation
// succeeded, 2 when none did (including "endpoint not implemented").
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"
)

// options are the flags. One set serves every scenario; each scenario reads
// the ones it needs and records them in the result's params.
type options struct {
	url              string
	auth             registration
	pid              int
	json             bool
	label            string
	prefix           string
	timeout          time.Duration
	n                int
	concurrency      int
	setupConcurrency int
	messages         int
	sameRoom         bool
	rate             float64
	listeners        int
	rooms            int
	perRoom          int
	repeat           int
	drain            time.Duration
	settle           time.Duration
	cpuProfile       string
	listenNetHTTP    bool
	perMessage       string
}

type scenario func(ctx context.Context, e *env, res *Result) error

var scenarios = map[string]scenario{
	"register":    runRegister,
	"rooms":       runRooms,
	"send":        runSend,
	"fanout":      runFanout,
	"initialsync": runInitialSync,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: myelin-bench register|rooms|send|fanout|initialsync -url URL [flags]")
	fmt.Fprintln(w, "       myelin-bench report -column NAME=FILE.jsonl [-column ...]")
	fmt.Fprintln(w, "run 'myelin-bench send -h' for the flags")
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "help" {
		usage(stderr)
		return 1
	}
	name, args := args[0], args[1:]
	if name == "report" {
		if err := runReport(args, stdout); err != nil {
			fmt.Fprintln(stderr, "myelin-bench report:", err)
			return 1
		}
		return 0
	}
	sc, ok := scenarios[name]
	if !ok {
		usage(stderr)
		return 1
	}
	opts, err := parseFlags(name, args, stderr)
	if err != nil {
		return 1
	}

	if opts.cpuProfile != "" {
		stop, err := startCPUProfile(opts.cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "myelin-bench:", err)
			return 1
		}
		defer stop()
	}

	res := &Result{Scenario: name, Label: opts.label, URL: opts.url, Started: time.Now().UTC(), Params: map[string]any{}}
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()
	e := &env{opts: opts, hc: newHTTPClient(), runID: randomHex(4)}
	if opts.prefix == "" {
		e.prefix = "bench" + e.runID
	} else {
		e.prefix = opts.prefix
	}
	if err := sc(ctx, e, res); err != nil {
		// The scenario could not get to its measured phase (or broke off).
		res.SetupError = err.Error()
		if res.Errors == nil {
			res.Errors = map[string]int{}
		}
		res.Errors[errorKey(err)]++
		res.ErrorCount++
	}

	human := stdout
	if opts.json {
		human = stderr
		b, _ := json.Marshal(res)
		fmt.Fprintln(stdout, string(b))
	}
	printHuman(human, res)
	if res.OK == 0 {
		return 2
	}
	return 0
}

func parseFlags(name string, args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8008", "homeserver base URL (client-server API)")
	fs.StringVar(&o.auth.mode, "auth", "dummy", "how to create users: dummy (open registration, m.login.dummy) or shared-secret")
	fs.StringVar(&o.auth.sharedSecret, "secret", "", "registration shared secret (with -auth shared-secret)")
	fs.IntVar(&o.pid, "pid", 0, "the server's process ID: read its CPU time and memory from /proc")
	fs.BoolVar(&o.json, "json", false, "print the result as one JSON object on stdout")
	fs.StringVar(&o.label, "label", "", "a name for this run in the report (default: the scenario)")
	fs.StringVar(&o.prefix, "prefix", "", "user name prefix (default: bench + a random run ID)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up on the whole run after this long")
	fs.IntVar(&o.n, "n", 100, "register, rooms: how many")
	fs.IntVar(&o.concurrency, "concurrency", 1, "register, rooms, send: concurrent workers (send: senders, each its own user)")
	fs.IntVar(&o.setupConcurrency, "setup-concurrency", 4, "concurrent requests while preparing users, rooms and messages (not measured)")
	fs.IntVar(&o.messages, "messages", 200, "send, fanout: messages in total")
	fs.BoolVar(&o.sameRoom, "same-room", false, "send: all senders in one room (default: each its own)")
	fs.Float64Var(&o.rate, "rate", 0, "send, fanout: open loop at this many messages/s, latency from the scheduled time (fanout: from the PUT's start if the tool began it late with no send in flight) (0: closed loop)")
	fs.IntVar(&o.listeners, "listeners", 20, "fanout: users long-polling /sync in the room")
	fs.IntVar(&o.rooms, "rooms", 50, "initialsync: rooms the user is in")
	fs.IntVar(&o.perRoom, "per-room", 10, "initialsync: messages in each room")
	fs.IntVar(&o.repeat, "repeat", 5, "initialsync: how many initial syncs to time")
	fs.DurationVar(&o.drain, "drain", 15*time.Second, "fanout: how long after the last send to wait for deliveries")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "initialsync, fanout: pause between preparing and measuring (fanout: with every listener's first long poll sent)")
	// The tool's own CPU profile, to find what it costs the machine it shares with the server.
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the tool's own CPU profile (whole run) to this file")
	fs.StringVar(&o.perMessage, "per-message", "", "fanout: write one line per message to this file (due, send start, acknowledgement, first and last delivery; ms from the start), to find what made one message slow")
	fs.BoolVar(&o.listenNetHTTP, "listen-nethttp", false, "fanout: listeners poll through net/http's client, as the tool did before syncConn (to compare the tool's own CPU)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.url = strings.TrimRight(o.url, "/")
	if o.label == "" {
		o.label = name
	}
	switch {
	case o.auth.mode != "dummy" && o.auth.mode != "shared-secret":
		err := fmt.Errorf("-auth must be dummy or shared-secret, not %q", o.auth.mode)
		fmt.Fprintln(stderr, err)
		return o, err
	case o.auth.mode == "shared-secret" && o.auth.sharedSecret == "":
		err := errors.New("-auth shared-secret needs -secret")
		fmt.Fprintln(stderr, err)
		return o, err
	case o.concurrency < 1 || o.setupConcurrency < 1 || o.n < 1 || o.messages < 1 || o.listeners < 1 || o.rooms < 1 || o.perRoom < 0 || o.repeat < 1 || o.rate < 0:
		err := errors.New("counts must be positive (and -rate, -per-room not negative)")
		fmt.Fprintln(stderr, err)
		return o, err
	}
	return o, nil
}

// startCPUProfile starts the Go CPU profile of this process into path and
// returns the function that stops it and closes the file.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// env is what one run shares between its workers.
type env struct {
	opts   options
	hc     *http.Client
	runID  string // random; marks this run's messages
	prefix string
	users  atomic.Int64
}

// newUser registers a fresh user whose name says its role.
func (e *env) newUser(ctx context.Context, role string) (*client, error) {
	name := fmt.Sprintf("%s-%s%d", e.prefix, role, e.users.Add(1))
	return e.opts.auth.register(ctx, e.hc, e.opts.url, name)
}

// newUsers registers n users, setup-concurrency at a time.
func (e *env) newUsers(ctx context.Context, role string, n int) ([]*client, error) {
	users := make([]*client, n)
	err := parallel(ctx, n, e.opts.setupConcurrency, func(ctx context.Context, i int) error {
		c, err := e.newUser(ctx, role)
		users[i] = c
		return err
	})
	return users, err
}

// parallel runs fn(0..n-1), at most width at a time, and returns the first
// error; after an error no new calls start.
func parallel(parent context.Context, n, width int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var next atomic.Int64
	errs := make(chan error, width)
	for w := 0; w < width; w++ {
		go func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					errs <- nil
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel()
					errs <- err
					return
				}
			}
		}()
	}
	var first error
	for w := 0; w < width; w++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		first = parent.Err()
	}
	return first
}
