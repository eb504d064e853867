package pgdriver

import (
	"database/sql/driver"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Type OIDs (PostgreSQL's pg_type.dat) of the types decoded natively.
const (
	oidBool   = 16
	oidBytea  = 17
	oidInt8   = 20
	oidInt2   = 21
	oidInt4   = 23
	oidText   = 25
	oidFloat4 = 700
	oidFloat8 = 701
)

const (
	textFormat   int16 = 0
	binaryFormat int16 = 1
)

// resultFormats asks for the binary form of the types whose binary form is
// cheaper to decode than their text (fixed-size numbers, booleans, and
// bytea, whose text form is hex) and the text form of everything else.
func resultFormats(fields []pgconn.FieldDescription) []int16 {
	if len(fields) == 0 {
		return nil
	}
	formats := make([]int16, len(fields))
	for i, f := range fields {
		if binaryResult(f.DataTypeOID) {
			formats[i] = binaryFormat
		}
	}
	return formats
}

func binaryResult(oid uint32) bool {
	switch oid {
	case oidBool, oidBytea, oidInt2, oidInt4, oidInt8, oidFloat4, oidFloat8:
		return true
	}
	return false
}

// decodeValue turns one result value into the driver.Value database/sql
// converts from (see the package doc). raw is nil for NULL.
func decodeValue(f pgconn.FieldDescription, raw []byte) (driver.Value, error) {
	if raw == nil {
		return nil, nil
	}
	if f.Format == textFormat {
		if binaryResult(f.DataTypeOID) {
			// Only when a server ignored the requested format.
			return nil, fmt.Errorf("type %d arrived in text format", f.DataTypeOID)
		}
		return string(raw), nil
	}
	switch f.DataTypeOID {
	case oidBool:
		if len(raw) != 1 {
			return nil, fmt.Errorf("bool of %d bytes", len(raw))
		}
		return raw[0] != 0, nil
	case oidBytea:
		return raw, nil
	case oidInt2:
		if len(raw) != 2 {
			return nil, fmt.Errorf("int2 of %d bytes", len(raw))
		}
		return int64(int16(binary.BigEndian.Uint16(raw))), nil
	case oidInt4:
		if len(raw) != 4 {
			return nil, fmt.Errorf("int4 of %d bytes", len(raw))
		}
		return int64(int32(binary.BigEndian.Uint32(raw))), nil
	case oidInt8:
		if len(raw) != 8 {
			return nil, fmt.Errorf("int8 of %d bytes", len(raw))
		}
		return int64(binary.BigEndian.Uint64(raw)), nil
	case oidFloat4:
		if len(raw) != 4 {
			return nil, fmt.Errorf("float4 of %d bytes", len(raw))
		}
		return float64(math.Float32frombits(binary.BigEndian.Uint32(raw))), nil
	case oidFloat8:
		if len(raw) != 8 {
			return nil, fmt.Errorf("float8 of %d bytes", len(raw))
		}
		return math.Float64frombits(binary.BigEndian.Uint64(raw)), nil
	}
	return nil, fmt.Errorf("type %d arrived in binary format", f.DataTypeOID)
}

// encodeParams encodes arguments for the statement's parameter types: text
// format throughout, except bytes or a string bound to a bytea parameter,
// which go as raw binary bytea.
func encodeParams(paramOIDs []uint32, args []driver.NamedValue) ([][]byte, []int16, error) {
	if len(args) == 0 {
		return nil, nil, nil
	}
	values := make([][]byte, len(args))
	var formats []int16 // nil: all text
	for i, a := range args {
		if a.Name != "" {
			return nil, nil, fmt.Errorf("pgdriver: named argument %q: only positional $N parameters are supported", a.Name)
		}
		if paramOIDs[i] == oidBytea {
			switch v := a.Value.(type) {
			case []byte:
				values[i] = v
			case string:
				values[i] = []byte(v)
			}
			if values[i] != nil {
				if formats == nil {
					formats = make([]int16, len(args))
				}
				formats[i] = binaryFormat
				continue
			}
		}
		b, err := encodeText(a.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("pgdriver: argument $%d: %w", a.Ordinal, err)
		}
		values[i] = b
	}
	return values, formats, nil
}

// encodeText returns v's text form as PostgreSQL's input functions read it
// (nil for NULL).
func encodeText(v driver.Value) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case int64:
		return strconv.AppendInt(nil, v, 10), nil
	case float64:
		switch {
		case math.IsNaN(v):
			return []byte("NaN"), nil
		case math.IsInf(v, 1):
			return []byte("Infinity"), nil
		case math.IsInf(v, -1):
			return []byte("-Infinity"), nil
		}
		return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
	case bool:
		if v {
			return []byte("true"), nil
		}
		return []byte("false"), nil
	case []byte:
		// A nil slice is NULL (pgx's rule, kept so callers see no change);
		// an empty one is the empty value.
		return v, nil
	case string:
		return []byte(v), nil
	case time.Time:
		return v.AppendFormat(nil, "2006-01-02 15:04:05.999999999Z07:00"), nil
	}
	return nil, fmt.Errorf("unsupported type %T", v)
}
