// Command pharox manages, leases and monitors pools of network proxies.
//
// Each subcommand lives in its own file and registers itself with
// rootCmd in an init function.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "pharox",
	Short:         "Manage, lease and monitor pools of network proxies",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "pharox: ") {
			msg = "pharox: " + msg
		}
		fmt.Fprintln(os.Stderr, msg+unavailableHint(err))
		os.Exit(exitCode(err))
	}
}
