//go:build tools

// Package tools pins the upstream Go programs scripts/check-charts runs on
// charts/: helm (lint, template), kubeconform (manifests against Kubernetes'
// OpenAPI schemas) and promtool (alert rules). A module of its own, apart from
// ../go.mod, so these programs' dependencies never move the etcd tools' ones.
// scripts/install-deps builds them into .tools/bin; nothing here is vendored.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
	_ "github.com/yannh/kubeconform/cmd/kubeconform"
	_ "helm.sh/helm/v4/cmd/helm"
)
