//go:build tools

// Package tools pins promtool, built by hack/cluster.sh to unit-test the
// chart's alerting rules.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
