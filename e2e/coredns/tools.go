//go:build tools

// The command e2e/run builds; this file only records it as a dependency.
package tools

import (
	_ "github.com/coredns/coredns"
)
