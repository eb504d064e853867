package config

import (
	"fmt"
	"slices"
	"strings"
)

// ComponentNames are the components a process may run (global.components,
// `myelin serve -components`). The roomserver is not among them: it is a
// library every process has, since the database is the log.
var ComponentNames = []string{"clientapi", "syncapi", "federationapi", "keyserver", "mediaapi", "pushserver", "appservice"}

// AllComponents is the value of global.components that names every
// component (so does an empty list).
const AllComponents = "all"

// Runs says whether this process runs the component name (one of
// ComponentNames): every one with global.components empty or "all".
func (g Global) Runs(name string) bool {
	if g.RunsAll() {
		return true
	}
	return slices.Contains(g.Components, name)
}

// RunsAll says whether this process runs every component (the default:
// one process, or several identical ones).
func (g Global) RunsAll() bool {
	if len(g.Components) == 0 || slices.Contains(g.Components, AllComponents) {
		return true
	}
	for _, name := range ComponentNames {
		if !slices.Contains(g.Components, name) {
			return false
		}
	}
	return true
}

// validateComponents checks global.components: known names only, and a
// subset (a split deployment: the other components run in other
// processes) only on a database and a notification channel that
// processes share — PostgreSQL and Redis.
func (c *Config) validateComponents() error {
	var errs []error
	known := strings.Join(ComponentNames, ", ")
	for _, name := range c.Global.Components {
		if name == AllComponents {
			if len(c.Global.Components) > 1 {
				errs = append(errs, fieldError("global.components", `"all" cannot be listed with other names`, "write all alone, or the components this process runs"))
			}
			continue
		}
		if !slices.Contains(ComponentNames, name) {
			errs = append(errs, fieldError("global.components", fmt.Sprintf("%q is not a component", name), "use "+known+" (or all)"))
		}
	}
	if len(errs) > 0 || c.Global.RunsAll() {
		return joinErrs(errs)
	}
	if c.Database.Engine != "postgres" {
		errs = append(errs, fieldError("global.components", fmt.Sprintf("runs only %s, which needs the other components in other processes on a shared PostgreSQL database, but database.engine is %q", strings.Join(c.Global.Components, ","), c.Database.Engine),
			"set database.engine: postgres (and postgres_url), or run all components (global.components empty)"))
	}
	if c.Global.RedisURL == "" {
		errs = append(errs, fieldError("global.components", fmt.Sprintf("runs only %s, which needs Redis to carry notifications and typing between the processes, but global.redis_url is empty", strings.Join(c.Global.Components, ",")),
			"set global.redis_url, e.g. redis://127.0.0.1:6379/0, or run all components (global.components empty)"))
	}
	return joinErrs(errs)
}
