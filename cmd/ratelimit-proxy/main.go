// Command ratelimit-proxy runs the proxy and helps operate it.
//
//	ratelimit-proxy [run] -config config.yaml [-listen ADDR] [-admin ADDR|off] [-data-dir DIR]
//	ratelimit-proxy check -config config.yaml
//	ratelimit-proxy ca path|export -config config.yaml
//	ratelimit-proxy env -config config.yaml
//	ratelimit-proxy health -config config.yaml | -admin ADDR
//	ratelimit-proxy status -config config.yaml | -admin ADDR
//	ratelimit-proxy version
//	ratelimit-proxy fingerprint < credential.txt
//
// run (the default; serve is an alias) serves until SIGINT or SIGTERM,
// then shuts down gracefully; SIGHUP or a change of the configuration file
// reloads it. Every command has -h. Errors are one line on standard error
// and exit status 1.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit-proxy:", err)
		os.Exit(1)
	}
}

// cli is what a command reads and writes.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// A command is one verb of the command line.
type command struct {
	name    string
	args    string // the synopsis after the name
	summary string // one line, for the list of commands
	about   string // what -h adds after the synopsis
	run     func(c *cli, cmd *command, args []string) error
}

// commands are the verbs, in the order the usage lists them.
var commands = []*command{
	{
		name: "run", args: "[-config FILE] [-listen ADDR] [-admin ADDR|off] [-data-dir DIR]",
		summary: "serve the proxy (the default command; serve is an alias)",
		about: `Serves until SIGINT or SIGTERM, then stops accepting, lets requests in
flight and queued finish until timeouts.shutdown, answers what is still
queued then with 503 and Retry-After, and exits 0. SIGHUP, or a change of
the configuration file, reloads the configuration without dropping a
request (see the README's "Reload").`,
		run: runServe,
	},
	{
		name: "check", args: "[-config FILE] [-listen ADDR] [-admin ADDR|off] [-data-dir DIR]",
		summary: "check the configuration and print the effective policy of every upstream",
		about: `Loads the configuration as run would (profiles expanded, defaults filled)
and prints what every upstream enforces. A problem exits 1 with the file,
line and field at fault.`,
		run: runCheck,
	},
	{
		name: "ca", args: "path|export [-config FILE] [-data-dir DIR]",
		summary: "print the path of the proxy's CA certificate, or the certificate",
		about: `ca path prints the path of the CA certificate clients must trust; ca
export prints the certificate (PEM). Either creates the CA first when it
does not exist yet, as run would.`,
		run: runCA,
	},
	{
		name: "env", args: "[-config FILE] [-listen ADDR] [-data-dir DIR] [-proxy URL]",
		summary: "print the environment that routes an application through the proxy",
		about: `Prints shell lines to paste (or eval) in the environment of an
application: the proxy variables, and the CA variables of curl, Python,
Node.js and OpenSSL pointing at DATA_DIR/ca-bundle.pem, a bundle of the
system roots plus the proxy's CA (written now, and by run at start), so
that both intercepted and tunnelled hosts are trusted. Java needs the
keytool line printed as a comment.`,
		run: runEnv,
	},
	{
		name: "health", args: "[-config FILE | -admin ADDR] [-timeout D]",
		summary: "exit 0 when the running proxy answers its admin /healthz",
		about: `Asks the running proxy's admin address for /healthz: exit 0 when it
answers 200, 1 otherwise. Needs no shell, so it serves as a container
HEALTHCHECK.`,
		run: runHealth,
	},
	{
		name: "status", args: "[-config FILE | -admin ADDR] [-timeout D]",
		summary: "print the quota state of every key the running proxy has seen",
		about: `Asks the running proxy's admin address for /v1/quotas and prints each
upstream and key (by fingerprint) with a bar of each limit's use, what is
left, when the next request may leave, the cooldown and the queue. When
the configuration sets client_tokens, put a token in the environment
variable RATELIMIT_PROXY_TOKEN: it is sent as Authorization: Bearer.`,
		run: runStatus,
	},
	{
		name: "version", args: "", summary: "print the version",
		about: `Prints the version (set at build time with
-ldflags "-X main.version=v1.2.3", else the module's), the commit when
known, and the Go version.`,
		run: runVersion,
	},
	{
		name: "fingerprint", args: "< credential.txt", summary: "print the fingerprint of a credential read from standard input",
		about: `Prints the first 12 hex digits of the credential's SHA-256: how logs
name a key, and what an override's fingerprint matches.`,
		run: runFingerprint,
	},
}

// aliases are other names of commands.
var aliases = map[string]string{"serve": "run"}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := &cli{stdin: stdin, stdout: stdout, stderr: stderr}
	name := "run"
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			if len(args) > 1 && args[0] == "help" {
				if cmd := lookup(args[1]); cmd != nil {
					cmd.usage(stdout)
					return nil
				}
			}
			usage(stdout)
			return nil
		}
		if !strings.HasPrefix(args[0], "-") {
			name, args = args[0], args[1:]
		}
	}
	cmd := lookup(name)
	if cmd == nil {
		var names []string
		for _, cmd := range commands {
			names = append(names, cmd.name)
		}
		return fmt.Errorf("unknown command %q (commands: %s; ratelimit-proxy -h explains them)", name, strings.Join(names, ", "))
	}
	return cmd.run(c, cmd, args)
}

func lookup(name string) *command {
	if a, ok := aliases[name]; ok {
		name = a
	}
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprint(w, `ratelimit-proxy keeps applications inside the quotas of the APIs they call.

Usage: ratelimit-proxy [COMMAND] [FLAGS]

Commands:
`)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprint(w, `
"ratelimit-proxy COMMAND -h" tells more about a command and its flags.
`)
}

func (cmd *command) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: ratelimit-proxy %s %s\n\n%s\n", cmd.name, cmd.args, cmd.about)
}

// flags returns an empty flag set for cmd.
func (cmd *command) flags() *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; -h is printed by parse
	fs.Usage = func() {}
	return fs
}

// parse parses args into fs. It reports false when the command must stop:
// after -h, which prints the command's usage and flags to stdout (err is
// nil: exit 0), or on a flag error, returned as one line naming the
// command. Arguments left after the flags are refused unless the command
// takes some.
func (cmd *command) parse(c *cli, fs *flag.FlagSet, args []string) (bool, error) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		cmd.usage(c.stdout)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(c.stdout, "\nFlags:")
			fs.SetOutput(c.stdout)
			fs.PrintDefaults()
			fs.SetOutput(io.Discard)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: %v (ratelimit-proxy %s -h lists the flags)", cmd.name, err, cmd.name)
	}
	return true, nil
}

// noArgs refuses arguments left after the flags.
func noArgs(cmd *command, fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", cmd.name, fs.Arg(0))
	}
	return nil
}
