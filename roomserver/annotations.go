package roomserver

import (
	"context"
	"embed"
	"io/fs"
	"strings"

	"github.com/tidwall/gjson"

	"github.com/myelin-chat/myelin/internal/mxerr"
	"github.com/myelin-chat/myelin/storage"
)

// Duplicate annotations.
//
// Spec: client-server-api, "Event annotations", "Avoiding duplicate
// annotations": "Homeservers should prevent users from sending a second
// annotation for a given event with identical event type and annotation
// key (unless the first event has been redacted)", with a 400 and
// M_DUPLICATE_ANNOTATION.
//
// Every stored event with an m.annotation relation gets a row in
// roomserver_annotations (insertEvent, in the event's transaction). A
// local send of an annotation checks the table inside its own write
// transaction (writeSend), after the event of the room queued before it
// was written in the same or an earlier transaction (one writer; see
// pipeline.go): of two identical annotations sent at once, the second to
// be written finds the first and is refused, with nothing of it stored.
// A redacted, rejected or soft-failed annotation does not count.
// Annotations received over federation are stored whatever they repeat:
// the spec leaves deduplicating those to clients.

// The annotation table is a migration set of its own, like the
// relationship tables, so its numbering never collides with the
// roomserver's main set.
//
//go:embed annotations_migrations/*.sql
var annotationMigrations embed.FS

// annotationsComponent is the schema component name of annotationMigrations.
const annotationsComponent = "roomserver_annotations"

// relAnnotation is the annotation relation type.
const relAnnotation = "m.annotation"

// migrateAnnotations creates the annotation table and, once, indexes the
// events stored before it existed.
func migrateAnnotations(ctx context.Context, db *storage.DB) error {
	sub, err := fs.Sub(annotationMigrations, "annotations_migrations")
	if err != nil {
		return err
	}
	if err := db.Migrate(ctx, annotationsComponent, sub); err != nil {
		return err
	}
	return db.Write(ctx, func(tx storage.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_annotations_backfilled`).Scan(&n); err != nil || n > 0 {
			return err
		}
		found, err := queryEventRows(ctx, tx, `SELECT `+eventColumns+` FROM roomserver_events
			WHERE json LIKE '%m.annotation%'`)
		if err != nil {
			return err
		}
		for _, e := range found {
			if err := indexAnnotation(ctx, tx, e); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `INSERT INTO roomserver_annotations_backfilled (done) VALUES ($1)`, true)
		return err
	})
}

// annotationOf reads the m.annotation relation of an event's JSON: the
// event annotated and the key. ok is false for state events and events
// without a well-formed annotation (event_id and key strings).
// Spec: client-server-api, "Event annotations", m.annotation.
func annotationOf(eventJSON string, stateKey *string) (relatesTo, key string, ok bool) {
	if stateKey != nil || !strings.Contains(eventJSON, relAnnotation) {
		return "", "", false
	}
	return contentAnnotation(gjson.Get(eventJSON, `content.m\.relates_to`))
}

func contentAnnotation(rel gjson.Result) (relatesTo, key string, ok bool) {
	if !rel.IsObject() || rel.Get("rel_type").Str != relAnnotation {
		return "", "", false
	}
	target, k := rel.Get("event_id"), rel.Get("key")
	if target.Type != gjson.String || k.Type != gjson.String || !validEventID(target.Str) {
		return "", "", false
	}
	return target.Str, k.Str, true
}

// indexAnnotation records e's annotation, if it has one, in tx. insertEvent
// calls it for every event stored. Rejected events are left out.
func indexAnnotation(ctx context.Context, tx storage.Tx, e *eventRow) error {
	if e.Rejected {
		return nil
	}
	relatesTo, key, ok := annotationOf(e.JSON, e.StateKey)
	if !ok {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO roomserver_annotations (event_id, relates_to, sender, type, annotation_key)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING`,
		e.EventID, relatesTo, e.Sender, e.Type, key)
	return err
}

// checkDuplicateAnnotation refuses e, a local user's new event, when it
// annotates an event with the same type and key as one of the sender's
// annotations of it that is stored, accepted and not redacted. It runs
// inside the send's write transaction, before the event is stored.
func checkDuplicateAnnotation(ctx context.Context, tx storage.Tx, e *eventRow) error {
	relatesTo, key, ok := annotationOf(e.JSON, e.StateKey)
	if !ok {
		return nil
	}
	var existing string
	err := tx.QueryRow(ctx, `
		SELECT a.event_id FROM roomserver_annotations a
		JOIN roomserver_events e ON e.event_id = a.event_id
		WHERE a.relates_to = $1 AND a.sender = $2 AND a.type = $3 AND a.annotation_key = $4
			AND e.redacted_because IS NULL AND NOT e.rejected AND NOT e.soft_failed
		LIMIT 1`, relatesTo, e.Sender, e.Type, key).Scan(&existing)
	if storage.IsNoRows(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return mxerr.New(mxerr.DuplicateAnnotation, "you have already sent this annotation (%s)", existing)
}
