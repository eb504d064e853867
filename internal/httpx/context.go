package httpx

import (
	"context"
	"log/slog"
	"sync"
)

type ctxKey int

const loggerKey ctxKey = iota

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
	return withLazyLogger(ctx, &lazyLogger{args: args})
}

// WithLoggerAttr is WithLoggerAttrs(ctx, key, value) for one string
// attribute, without the argument slice and the boxed value that every
// request would allocate for it (the request path adds one per request).
func WithLoggerAttr(ctx context.Context, key, value string) context.Context {
	return withLazyLogger(ctx, &lazyLogger{one: true, key: key, value: value})
}

func withLazyLogger(ctx context.Context, l *lazyLogger) context.Context {
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

// lazyLogger is a logger with attributes not yet added (WithLoggerAttrs,
// WithLoggerAttr, and RequestLog's request ID).
type lazyLogger struct {
	base   *slog.Logger // immutable; nil: parent's, or slog.Default()
	parent *lazyLogger  // immutable
	args   []any        // immutable; unused when one is set
	// one: the attributes are the one string attribute key=value
	// (WithLoggerAttr, RequestLog); immutable.
	one        bool
	key, value string
	// requestID is set on the node RequestLog adds, which carries the
	// request ID as its attribute; immutable.
	requestID string
	// header is the X-Request-Id header's value slice, kept here so the
	// request's one allocation holds it too; immutable.
	header [1]string
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
		if l.one {
			l.built = base.With(l.key, l.value)
		} else {
			l.built = base.With(l.args...)
		}
	})
	return l.built
}

// RequestID returns the request ID RequestLog put in ctx, or "".
func RequestID(ctx context.Context) string {
	l, _ := ctx.Value(loggerKey).(*lazyLogger)
	for ; l != nil; l = l.parent {
		if l.requestID != "" {
			return l.requestID
		}
	}
	return ""
}

// WithValueAndLoggerAttr is context.WithValue(WithLoggerAttr(ctx,
// logKey, logValue), key, value) in one context node and one allocation
// (three otherwise): authn's Middleware adds the caller and its "user"
// log attribute to every authenticated request this way. key must be
// comparable, as for context.WithValue.
func WithValueAndLoggerAttr(ctx context.Context, key, value any, logKey, logValue string) context.Context {
	n := &valueLoggerCtx{Context: ctx, key: key, value: value}
	n.log = lazyLogger{one: true, key: logKey, value: logValue}
	switch parent := ctx.Value(loggerKey).(type) {
	case *slog.Logger:
		n.log.base = parent
	case *lazyLogger:
		n.log.parent = parent
	}
	return n
}

// valueLoggerCtx answers key with value and the logger key with its
// lazyLogger; other keys, Done, Err and Deadline are its parent's.
// Immutable but for log's once.
type valueLoggerCtx struct {
	context.Context
	key, value any
	log        lazyLogger
}

func (c *valueLoggerCtx) Value(key any) any {
	switch key {
	case c.key:
		return c.value
	case loggerKey:
		return &c.log
	}
	return c.Context.Value(key)
}
