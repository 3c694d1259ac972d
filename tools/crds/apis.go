//go:build tools

// Package crds only records, for `go mod tidy`, the API packages that controller-gen reads.
package crds

import (
	_ "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)
