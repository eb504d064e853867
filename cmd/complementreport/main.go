// Command complementreport turns the `go test -json` output of a
// Complement run into docs/compliance.md: per package (./tests,
// ./tests/csapi, ./tests/msc*) the tests and subtests passed, failed and
// skipped, and every failure with the reason it fails and the issue or
// feature it waits on, taken from a checked-in mapping file
// (build/complement/failure-reasons.tsv). It only reads results; it does
// not build or run Complement (build/complement/README.md says how).
//
//	go run ./cmd/complementreport -commit <complement commit> -commit-date 2026-07-01 results.json...
//
// With no files it reads standard input.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "complementreport:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("complementreport", flag.ContinueOnError)
	var m meta
	fs.StringVar(&m.Commit, "commit", "", "the Complement commit that ran (required; git -C <complement> rev-parse HEAD)")
	fs.StringVar(&m.CommitDate, "commit-date", "", "that commit's date, YYYY-MM-DD")
	fs.StringVar(&m.RunDate, "run-date", "", "the date of the run, YYYY-MM-DD (default: the date of the last event in the input)")
	fs.StringVar(&m.Myelin, "myelin", "", "the Myelin version or commit under test")
	reasonsPath := fs.String("reasons", "build/complement/failure-reasons.tsv", "the failure-reason mapping file")
	out := fs.String("out", "docs/compliance.md", `where to write the report ("-" for standard output)`)
	dockerfile := fs.String("dockerfile", "build/complement/Dockerfile", `the image's Dockerfile, whose MYELIN_* settings the report lists ("" to leave them out)`)
	module := fs.String("module", "github.com/matrix-org/complement", "Complement's module path, stripped from package names")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if m.Commit == "" {
		return errors.New("-commit is required")
	}

	var inputs []io.Reader
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		inputs = append(inputs, f)
	}
	if len(inputs) == 0 {
		inputs = append(inputs, stdin)
	}
	results, err := readRun(*module, inputs...)
	if err != nil {
		return err
	}
	if cached := results.cachedPackages(); len(cached) > 0 {
		return fmt.Errorf("go test replayed %s from its cache (it cannot see that the image changed): run Complement with -count=1", strings.Join(cached, ", "))
	}
	if m.RunDate == "" && !results.Last.IsZero() {
		m.RunDate = results.Last.UTC().Format("2006-01-02")
	}

	rf, err := os.Open(*reasonsPath)
	if err != nil {
		return err
	}
	defer rf.Close()
	rs, err := parseReasons(rf)
	if err != nil {
		return fmt.Errorf("%s: %w", *reasonsPath, err)
	}

	if *dockerfile != "" {
		df, err := os.Open(*dockerfile)
		if err != nil {
			return err
		}
		defer df.Close()
		if m.Image, err = imageSettings(df); err != nil {
			return fmt.Errorf("%s: %w", *dockerfile, err)
		}
	}

	report, err := render(results, rs, m)
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err = stdout.Write(report)
		return err
	}
	return os.WriteFile(*out, report, 0o644)
}
