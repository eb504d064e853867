package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/myelin-chat/myelin/config"
)

// setting is one environment variable the Complement image sets.
type setting struct{ Name, Value string }

// imageSettings reads the MYELIN_* variables set by the ENV instructions of
// a Dockerfile (the form ENV A=b C=d, continued over lines ending in a
// backslash), so that the report says how the tested server was configured.
func imageSettings(r io.Reader) ([]setting, error) {
	var out []setting
	var instr strings.Builder
	flush := func() error {
		line := strings.TrimSpace(instr.String())
		instr.Reset()
		keyword, rest, _ := strings.Cut(line, " ")
		if !strings.EqualFold(keyword, "ENV") {
			return nil
		}
		for _, field := range strings.Fields(rest) {
			name, value, ok := strings.Cut(field, "=")
			if !ok {
				return fmt.Errorf("ENV %q: only the NAME=value form is read", line)
			}
			if strings.HasPrefix(name, config.EnvPrefix) {
				out = append(out, setting{name, strings.Trim(value, `"`)})
			}
		}
		return nil
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if instr.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue // a comment inside a continued instruction
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			instr.WriteString(cont)
			instr.WriteByte(' ')
			continue
		}
		instr.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if instr.Len() > 0 {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// defaultRoomVersionVar is the variable that sets
// room_server.default_room_version.
var defaultRoomVersionVar = config.EnvName([]string{"room_server", "default_room_version"})

// renderImage writes the section on the image's configuration.
func renderImage(w func(string, ...any), settings []setting) {
	if settings == nil {
		return
	}
	w("## How the image is configured\n\n")
	w("The image (`build/complement/Dockerfile`, which says why for each) runs `myelin` with these settings on top of its defaults:\n\n")
	w("| variable | value |\n|---|---|\n")
	for _, s := range settings {
		w("| `%s` | `%s` |\n", s.Name, cell(s.Value))
	}
	w("\n")
	for _, s := range settings {
		if s.Name == defaultRoomVersionVar {
			if def := (config.RoomServer{}).Defaults().DefaultRoomVersion; s.Value != def {
				w("Rooms a test creates without asking for a version are room version %s here; a default install creates room version %s. ", s.Value, def)
				w("Tests that ask for a version (room version 12 ones included) get it either way.\n\n")
			}
		}
	}
}
