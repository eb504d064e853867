package clientapi_test

import "time"

var timeZero time.Time
