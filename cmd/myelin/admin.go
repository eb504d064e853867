package main

import (
	"fmt"
	"io"
)

// runUser and runToken are the account and registration-token admin
// commands; they are filled in with the accounts work.
func runUser(args []string, stdout, stderr io.Writer) error {
	return fmt.Errorf("user: not built yet")
}

func runToken(args []string, stdout, stderr io.Writer) error {
	return fmt.Errorf("token: not built yet")
}
