// Command pharox manages, leases and monitors pools of network proxies.
//
// Each subcommand lives in its own file and registers itself with
// rootCmd in an init function.
package main

import (
	"context"
	"errors"
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
	prepareCommands(rootCmd)
	if err := rootCmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, errorLine(err))
		stop()
		os.Exit(exitCode(err))
	}
}

// errorLine is the line main prints for a failed command: "pharox: "
// once, then the message without the "pharox: " prefixes of the library's
// sentinel errors inside it (`pharox: pool "x": pool not found`, not
// `pharox: pool "x": pharox: pool not found`).
func errorLine(err error) string {
	return "pharox: " + plainMessage(err) + unavailableHint(err)
}

// plainMessage is err's message without any "pharox: " prefix, at its
// start or after another message's ": ".
func plainMessage(err error) string {
	return strings.TrimPrefix(strings.ReplaceAll(err.Error(), ": pharox: ", ": "), "pharox: ")
}

// usageError is a command line the CLI cannot read: an unknown command or
// flag, or the wrong number of arguments. It exits with status 2, as
// usage errors do by convention, so scripts tell them from failures.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// prepareCommands makes every command report usage errors as usageError:
// flag and argument errors, and an unknown subcommand of a command group,
// which cobra would otherwise answer with the group's help and status 0.
func prepareCommands(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	c.SuggestionsMinimumDistance = 2
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs
		c.RunE = runGroup
	} else if check := c.Args; check != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		prepareCommands(sub)
	}
}

// runGroup runs a command that only groups subcommands: alone it shows its
// help; with an argument, that argument is no subcommand of it.
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageError{errors.New(msg + "; see " + cmd.CommandPath() + " --help")}
}
