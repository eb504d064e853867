package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/myelin-chat/myelin/clientapi"
)

// runReports reads and clears the content reports users made, directly
// in the database (the same queues as the /_synapse/admin/v1/*_reports
// endpoints, without the room names and events those look up).
//
//	myelin reports list [-config f] [-kind event|room|user] [-from N] [-limit N] [-dir b|f] [-user S] [-room S] [-target S] [-sender ID]
//	myelin reports show [-config f] [-kind event|room|user] <id>
//	myelin reports delete [-config f] [-kind event|room|user] <id>
func runReports(args []string, stdout, stderr io.Writer) error {
	const usage = "usage: myelin reports list|show|delete [-config myelin.yaml] [-kind event|room|user] [flags] [id]"
	if len(args) == 0 {
		return errors.New(usage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("reports "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "myelin.yaml", "config file")
	kind := fs.String("kind", "event", "which reports: event, room or user")
	var (
		from, limit                     *int64
		dir, user, room, target, sender *string
	)
	wantArgs := 1
	switch sub {
	case "list":
		wantArgs = 0
		from = fs.Int64("from", 0, "how many matching reports to skip")
		limit = fs.Int64("limit", 100, "how many reports to list (at most 1000)")
		dir = fs.String("dir", "b", "b: newest first; f: oldest first")
		user = fs.String("user", "", "only reports by users whose ID contains this")
		room = fs.String("room", "", "only event and room reports about rooms whose ID contains this")
		target = fs.String("target", "", "only user reports about users whose ID contains this")
		sender = fs.String("sender", "", "only event reports about events this user (exact ID) sent")
	case "show", "delete":
	default:
		return fmt.Errorf("unknown reports command %q; %s", sub, usage)
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != wantArgs {
		return errors.New(usage)
	}
	k := clientapi.ReportKind(*kind)
	if k != clientapi.EventReports && k != clientapi.RoomReports && k != clientapi.UserReports {
		return fmt.Errorf("-kind must be event, room or user, not %q", *kind)
	}
	var id int64
	if wantArgs == 1 {
		if id, err = strconv.ParseInt(positional[0], 10, 64); err != nil || id < 0 {
			return fmt.Errorf("the report ID must be an integer of at least 0, not %q", positional[0])
		}
	}
	ctx := context.Background()
	accounts, closeDB, err := openAccounts(ctx, *configPath, stdout)
	if err != nil {
		return err
	}
	defer closeDB()
	if err := accounts.MigrateReportTables(ctx); err != nil {
		return err
	}
	switch sub {
	case "list":
		if *dir != "b" && *dir != "f" {
			return errors.New("-dir must be b or f")
		}
		q := clientapi.ReportQuery{Kind: k, From: *from, Limit: *limit, Forwards: *dir == "f",
			Reporter: *user, RoomID: *room, TargetUserID: *target, Sender: *sender}
		reports, total, err := accounts.Reports(ctx, q)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tRECEIVED\tREPORTER\tABOUT\tREASON")
		for _, rep := range reports {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%q\n", rep.ID, received(rep), rep.Reporter, about(rep), rep.Reason)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d of %d %s reports", len(reports), total, k)
		if q.From+q.Limit < total {
			fmt.Fprintf(stdout, "; next page: -from %d", q.From+int64(len(reports)))
		}
		fmt.Fprintln(stdout)
	case "show":
		rep, err := accounts.Report(ctx, k, id)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "id: %d\nkind: %s\nreceived: %s\nreporter: %s\n", rep.ID, rep.Kind, received(rep), rep.Reporter)
		switch rep.Kind {
		case clientapi.UserReports:
			fmt.Fprintf(stdout, "user: %s\n", rep.TargetUserID)
		case clientapi.EventReports:
			fmt.Fprintf(stdout, "room: %s\nevent: %s\nsender: %s\n", rep.RoomID, rep.EventID, rep.Sender)
			if rep.Score != nil {
				fmt.Fprintf(stdout, "score: %d\n", *rep.Score)
			}
		default:
			fmt.Fprintf(stdout, "room: %s\n", rep.RoomID)
		}
		fmt.Fprintf(stdout, "reason: %q\n", rep.Reason)
	case "delete":
		if err := accounts.DeleteReport(ctx, k, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Deleted %s report %d.\n", k, id)
	}
	return nil
}

func received(rep clientapi.Report) string {
	return time.UnixMilli(rep.ReceivedTS).UTC().Format(time.RFC3339)
}

// about names what a report is about: the event, the room or the user.
func about(rep clientapi.Report) string {
	switch rep.Kind {
	case clientapi.UserReports:
		return rep.TargetUserID
	case clientapi.EventReports:
		return rep.EventID + " in " + rep.RoomID
	}
	return rep.RoomID
}
