package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// EnvPrefix starts every override variable.
const EnvPrefix = "MYELIN_"

// EnvName returns the environment variable that overrides the field at a
// YAML path such as ["client_api", "registration"].
func EnvName(path []string) string {
	return EnvPrefix + strings.ToUpper(strings.Join(path, "_"))
}

// applyEnv overrides fields from MYELIN_<SECTION>_<FIELD> variables. Lists
// are comma-separated.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	if len(env) == 0 {
		return nil
	}
	var errs []error
	walkFields(reflect.ValueOf(cfg).Elem(), nil, func(path []string, v reflect.Value, _ reflect.StructField) {
		name := EnvName(path)
		raw, ok := env[name]
		if !ok {
			return
		}
		if err := setFromString(v, raw); err != nil {
			errs = append(errs, fmt.Errorf("  %s: %v", name, err))
		}
	})
	return joinErrs(errs)
}

// walkFields calls fn for every leaf field (anything but a nested struct
// without text marshalling) with its YAML path.
func walkFields(v reflect.Value, path []string, fn func(path []string, v reflect.Value, f reflect.StructField)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := yamlName(f)
		if name == "-" || !f.IsExported() {
			continue
		}
		fv := v.Field(i)
		p := append(append([]string(nil), path...), name)
		if f.Type.Kind() == reflect.Struct && !implementsText(f.Type) {
			walkFields(fv, p, fn)
			continue
		}
		fn(p, fv, f)
	}
}

func yamlName(f reflect.StructField) string {
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

func implementsText(t reflect.Type) bool { return reflect.PointerTo(t).Implements(textUnmarshaler) }

func setFromString(v reflect.Value, raw string) error {
	if v.CanAddr() && implementsText(v.Type()) {
		return v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(raw))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("%q is not true or false", raw)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", raw)
		}
		v.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", raw)
		}
		v.SetFloat(n)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot set a list of %s from the environment", v.Type().Elem())
		}
		var items []string
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		v.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("cannot set a %s from the environment", v.Kind())
	}
	return nil
}
