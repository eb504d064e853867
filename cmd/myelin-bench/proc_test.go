package main

import (
	"os"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want float64
	}{
		{
			name: "plain command name",
			stat: "4242 (dendrite) S 1 4242 4242 0 -1 4194560 25811 0 0 0 1234 566 0 0 20 0 14 0 123456 1500000000 20000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0\n",
			want: 18.00, // (1234 + 566) / 100
		},
		{
			name: "command name with spaces and parentheses",
			stat: "7 (my (odd) server) R 1 7 7 0 -1 0 0 0 0 0 5 3 0 0 20 0 1 0 1 1 1\n",
			want: 0.08,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("cpu = %v s, want %v s", got, tt.want)
			}
		})
	}
}

func TestParseStatCPURejectsTruncated(t *testing.T) {
	for _, stat := range []string{"", "1 (x) S 1 2 3", "1 x S"} {
		if _, err := parseStatCPU([]byte(stat)); err == nil {
			t.Errorf("parseStatCPU(%q) succeeded, want an error", stat)
		}
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := `Name:	dendrite
Umask:	0022
State:	S (sleeping)
VmPeak:	 2463312 kB
VmSize:	 2463312 kB
VmHWM:	  280636 kB
VmRSS:	   54120 kB
RssAnon:	   40000 kB
Threads:	14
`
	rss, hwm, err := parseStatusMemory([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if rss != 54120 || hwm != 280636 {
		t.Errorf("rss, hwm = %d, %d kB; want 54120, 280636", rss, hwm)
	}
	if _, _, err := parseStatusMemory([]byte("Name:\tkthreadd\nState:\tS\n")); err == nil {
		t.Error("a status without VmRSS parsed, want an error")
	}
}

func TestParseMachineBusy(t *testing.T) {
	stat := "cpu  1000 10 300 9000 500 20 30 40 77 0\ncpu0 500 5 150 4500 250 10 15 20 0 0\n"
	got, err := parseMachineBusy([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 1000+10+300+20+30+40 ticks; idle,
	// iowait and guest (already inside user) are left out.
	if want := 14.0; got != want {
		t.Errorf("busy = %v s, want %v s", got, want)
	}
}

// TestReadProcSelf reads this test process, so the real files are parsed.
func TestReadProcSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	s, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSSKB <= 0 || s.PeakRSSKB < s.RSSKB || s.MachineBusyS <= 0 {
		t.Errorf("implausible sample %+v", s)
	}
}
