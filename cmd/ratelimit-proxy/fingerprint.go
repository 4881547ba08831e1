package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

func runFingerprint(c *cli, cmd *command, args []string) error {
	fs := cmd.flags()
	if ok, err := cmd.parse(c, fs, args); !ok {
		return err
	}
	if err := noArgs(cmd, fs); err != nil {
		return err
	}
	line, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the credential from standard input: %w", err)
	}
	cred := strings.TrimSpace(line)
	if cred == "" {
		return errors.New("fingerprint reads one credential from standard input; got none")
	}
	sum := sha256.Sum256([]byte(cred))
	fmt.Fprintln(c.stdout, hex.EncodeToString(sum[:])[:12])
	return nil
}
