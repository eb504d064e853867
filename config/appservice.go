package config

import "time"

// AppService configures application services (bridges, bots).
type AppService struct {
	// ConfigFiles are read at start; a bad or clashing registration stops
	// the server with an error naming the file.
	ConfigFiles []string `yaml:"config_files" doc:"Registration files of application services, each a YAML file (id, url, as_token, hs_token, sender_localpart, namespaces, rate_limited, protocols), or directories whose *.yaml and *.yml files are all read. A directory that does not exist holds none. Empty: no application services."`
	MinBackoff  Duration `yaml:"min_backoff" doc:"First wait before retrying a transaction an application service did not accept; it doubles on each failure up to max_backoff."`
	MaxBackoff  Duration `yaml:"max_backoff" doc:"Longest wait between retries of a transaction to an application service."`
}

func (AppService) Defaults() AppService {
	return AppService{ConfigFiles: []string{}, MinBackoff: Duration(time.Second), MaxBackoff: Duration(5 * time.Minute)}
}

func (a AppService) Validate() error {
	var errs []error
	if a.MinBackoff <= 0 {
		errs = append(errs, fieldError("app_service.min_backoff", "must be positive", "e.g. 1s"))
	}
	if a.MaxBackoff < a.MinBackoff {
		errs = append(errs, fieldError("app_service.max_backoff", "is below min_backoff", "e.g. 5m"))
	}
	return joinErrs(errs)
}
