package mongotest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills FerretDB when the test process dies without Stop.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
