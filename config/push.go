package config

import (
	"fmt"
	"time"
)

// Push configures notifications: push rule evaluation and delivery to
// push gateways.
type Push struct {
	MinBackoff              Duration `yaml:"min_backoff" doc:"First wait before retrying a push gateway that failed; it doubles on each failure up to max_backoff."`
	MaxBackoff              Duration `yaml:"max_backoff" doc:"Longest wait between retries to a failing push gateway."`
	GiveUpAfter             Duration `yaml:"give_up_after" doc:"A notification not delivered this long after it was queued is dropped."`
	RequestTimeout          Duration `yaml:"request_timeout" doc:"How long one request to a push gateway may take."`
	OutboundIPAllow         []string `yaml:"outbound_ip_allow" doc:"IPs or CIDRs push gateways may be on although they are loopback, private, link-local or otherwise not public (refused by default), e.g. a gateway on your own network."`
	NotificationRetention   Duration `yaml:"notification_retention" doc:"How long entries stay in GET /notifications; older ones are deleted, and no longer count as unread."`
	ThreadSubscriptionRules bool     `yaml:"thread_subscription_rules" doc:"Add MSC4306's default push rules (postcontent .io.element.msc4306.rule.unsubscribed_thread and .subscribed_thread): messages in a thread notify only when the user subscribed to it. Leave off unless your users' clients subscribe to threads; with a client that does not, thread messages stop notifying."`
}

func (Push) Defaults() Push {
	return Push{
		MinBackoff:            Duration(time.Second),
		MaxBackoff:            Duration(time.Hour),
		GiveUpAfter:           Duration(24 * time.Hour),
		RequestTimeout:        Duration(15 * time.Second),
		OutboundIPAllow:       []string{},
		NotificationRetention: Duration(30 * 24 * time.Hour),
	}
}

func (p Push) Validate() error {
	var errs []error
	if p.MinBackoff <= 0 {
		errs = append(errs, fieldError("push.min_backoff", "must be positive", "e.g. 1s"))
	}
	if p.MaxBackoff < p.MinBackoff {
		errs = append(errs, fieldError("push.max_backoff", "is below min_backoff", "e.g. 1h"))
	}
	if p.GiveUpAfter <= 0 {
		errs = append(errs, fieldError("push.give_up_after", "must be positive", "e.g. 24h"))
	}
	if p.RequestTimeout <= 0 {
		errs = append(errs, fieldError("push.request_timeout", "must be positive", "e.g. 15s"))
	}
	if p.NotificationRetention < Duration(time.Hour) {
		errs = append(errs, fieldError("push.notification_retention", "must be at least 1h", "e.g. 720h (30 days)"))
	}
	for _, s := range p.OutboundIPAllow {
		if _, err := ParseIPOrPrefix(s); err != nil {
			errs = append(errs, fieldError("push.outbound_ip_allow", fmt.Sprintf("%q is not an IP or CIDR", s), "write e.g. 10.1.2.3 or 192.168.0.0/16"))
		}
	}
	return joinErrs(errs)
}
