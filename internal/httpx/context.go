package httpx

import (
	"context"
	"log/slog"
	"sync"
)

type ctxKey int

const (
	loggerKey ctxKey = iota
	requestIDKey
)

// WithLogger returns ctx carrying logger.
func WithLogger(ctx context.Context, logger *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey, logger)
}

// WithLoggerAttrs returns ctx whose Logger is ctx's with args added, as
// slog.Logger.With adds them. The attributes are formatted only when
// something asks for the logger: a handler's With pre-formats them
// (slog.TextHandler writes them out at once), which cost every request
// its share although almost no request logs anything.
func WithLoggerAttrs(ctx context.Context, args ...any) context.Context {
	l := &lazyLogger{args: args}
	switch parent := ctx.Value(loggerKey).(type) {
	case *slog.Logger:
		l.base = parent
	case *lazyLogger:
		l.parent = parent
	}
	return context.WithValue(ctx, loggerKey, l)
}

// Logger returns the request-scoped logger in ctx, or slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	switch l := ctx.Value(loggerKey).(type) {
	case *slog.Logger:
		return l
	case *lazyLogger:
		return l.logger()
	}
	return slog.Default()
}

// lazyLogger is a logger with attributes not yet added (WithLoggerAttrs).
type lazyLogger struct {
	base   *slog.Logger // immutable; nil: parent's, or slog.Default()
	parent *lazyLogger  // immutable
	args   []any        // immutable
	once   sync.Once
	built  *slog.Logger // set once by logger
}

func (l *lazyLogger) logger() *slog.Logger {
	l.once.Do(func() {
		base := l.base
		switch {
		case l.parent != nil:
			base = l.parent.logger()
		case base == nil:
			base = slog.Default()
		}
		l.built = base.With(l.args...)
	})
	return l.built
}

// RequestID returns the request ID the RequestID middleware put in ctx.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

func contextWithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}
