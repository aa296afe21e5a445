//go:build !linux

package mongotest

import "os/exec"

func setDeathSignal(*exec.Cmd) {}
