package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// userHZ is the unit of the CPU times in /proc: Linux reports them in
// USER_HZ ticks, which is 100 on every architecture Go supports on Linux,
// whatever the kernel's internal HZ (see proc(5), "/proc/pid/stat").
const userHZ = 100

// procSample is one reading of a process's CPU time and memory from /proc,
// together with the whole machine's busy CPU time.
type procSample struct {
	CPUSeconds     float64 // utime + stime of the process
	RSSKB          int64   // VmRSS: resident memory now
	PeakRSSKB      int64   // VmHWM: the highest resident memory since the process started
	MachineBusyS   float64 // busy time of all CPUs (user+nice+system+irq+softirq+steal)
	SelfCPUSeconds float64 // utime + stime of this benchmark process
}

// readProc samples process pid.
func readProc(pid int) (procSample, error) {
	var s procSample
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.CPUSeconds, err = parseStatCPU(stat); err != nil {
		return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	if s.RSSKB, s.PeakRSSKB, err = parseStatusMemory(status); err != nil {
		return s, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	if machine, err := os.ReadFile("/proc/stat"); err == nil {
		s.MachineBusyS, _ = parseMachineBusy(machine)
	}
	if self, err := os.ReadFile("/proc/self/stat"); err == nil {
		s.SelfCPUSeconds, _ = parseStatCPU(self)
	}
	return s, nil
}

// parseStatCPU returns utime+stime, in seconds, from the contents of
// /proc/PID/stat. The second field, the command name, is in parentheses and
// may itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func parseStatCPU(stat []byte) (float64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("no ')' after the command name")
	}
	// After ")": field 3 (state) is rest[0], so field N is rest[N-3].
	rest := strings.Fields(string(stat[end+1:]))
	const utimeField, stimeField = 14, 15
	if len(rest) <= stimeField-3 {
		return 0, fmt.Errorf("only %d fields after the command name", len(rest))
	}
	utime, err := strconv.ParseUint(rest[utimeField-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(rest[stimeField-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return float64(utime+stime) / userHZ, nil
}

// parseStatusMemory returns VmRSS and VmHWM, in kB, from /proc/PID/status.
func parseStatusMemory(status []byte) (rssKB, hwmKB int64, err error) {
	var haveRSS, haveHWM bool
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("%s: unexpected value %q", name, value)
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		if name == "VmRSS" {
			rssKB, haveRSS = n, true
		} else {
			hwmKB, haveHWM = n, true
		}
	}
	if !haveRSS || !haveHWM {
		return 0, 0, fmt.Errorf("no VmRSS/VmHWM lines (is it a kernel thread or a zombie?)")
	}
	return rssKB, hwmKB, sc.Err()
}

// parseMachineBusy returns the busy time of all CPUs, in seconds, from the
// aggregate "cpu" line of /proc/stat. Idle and iowait are not busy; guest
// time is already counted in user time, so it is not added again.
func parseMachineBusy(stat []byte) (float64, error) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, fmt.Errorf("first line is not the aggregate cpu line: %q", line)
	}
	var busy uint64
	// user nice system idle iowait irq softirq steal
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseUint(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu field %d: %w", i, err)
		}
		busy += n
	}
	return float64(busy) / userHZ, nil
}
