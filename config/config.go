// Package config is Myelin's configuration: one struct per component,
// each with Defaults and Validate. The YAML file (myelin.yaml) is decoded
// strictly (an unknown key is an error naming it), environment variables
// MYELIN_<SECTION>_<FIELD> override it, and the documented sample file is
// generated from these structs: the `doc` tag of each field is its user
// documentation.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
)

// Config is the whole configuration.
type Config struct {
	Global     Global     `yaml:"global" doc:"Settings every component shares."`
	HTTP       HTTP       `yaml:"http" doc:"The client-facing HTTP listener."`
	Database   Database   `yaml:"database" doc:"Where Myelin keeps its data."`
	Logging    Logging    `yaml:"logging" doc:"Log output."`
	Metrics    Metrics    `yaml:"metrics" doc:"Prometheus metrics."`
	ClientAPI  ClientAPI  `yaml:"client_api" doc:"Accounts, login, registration and the client-server API."`
	RoomServer RoomServer `yaml:"room_server" doc:"Rooms and events."`
	Federation Federation `yaml:"federation_api" doc:"Talking to other homeservers."`
	MediaAPI   MediaAPI   `yaml:"media_api" doc:"Uploads, downloads, thumbnails, URL previews and remote media."`
	Push       Push       `yaml:"push" doc:"Notifications: unread counts and delivery to push gateways."`
	AppService AppService `yaml:"app_service" doc:"Application services: bridges and bots registered by YAML files."`
}

// Defaults returns the configuration used for anything the file leaves out.
func Defaults() Config {
	return Config{
		Global:     Global{}.Defaults(),
		HTTP:       HTTP{}.Defaults(),
		Database:   Database{}.Defaults(),
		Logging:    Logging{}.Defaults(),
		Metrics:    Metrics{}.Defaults(),
		ClientAPI:  ClientAPI{}.Defaults(),
		RoomServer: RoomServer{}.Defaults(),
		Federation: Federation{}.Defaults(),
		MediaAPI:   MediaAPI{}.Defaults(),
		Push:       Push{}.Defaults(),
		AppService: AppService{}.Defaults(),
	}
}

// Validate checks every section and returns all problems at once.
func (c *Config) Validate() error {
	return errors.Join(
		c.Global.Validate(),
		c.HTTP.Validate(),
		c.Database.Validate(),
		c.Logging.Validate(),
		c.Metrics.Validate(),
		c.ClientAPI.Validate(),
		c.RoomServer.Validate(),
		c.Federation.Validate(),
		c.MediaAPI.Validate(),
		c.Push.Validate(),
		c.AppService.Validate(),
		c.validateComponents(),
	)
}

// Load reads the YAML file at path over the defaults, applies environment
// overrides from environ (os.Environ() in production) and validates.
func Load(path string, environ []string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, environ)
}

// Parse is Load for config bytes already in memory.
func Parse(data []byte, environ []string) (*Config, error) {
	cfg := Defaults()
	if len(bytes.TrimSpace(data)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data), yaml.DisallowUnknownField(), yaml.Strict())
		if err := dec.Decode(&cfg); err != nil {
			return nil, fmt.Errorf("config: %s", yaml.FormatError(err, false, true))
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config is invalid:\n%w", err)
	}
	return &cfg, nil
}

// fieldError names the field and says how to fix it.
func fieldError(field, problem, fix string) error {
	return fmt.Errorf("  %s: %s; %s", field, problem, fix)
}

// Duration is a time.Duration written in YAML as "10s", "5m", "672h".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%q is not a duration (examples: 30s, 5m, 672h)", b)
	}
	*d = Duration(v)
	return nil
}
