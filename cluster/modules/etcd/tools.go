//go:build tools

// Package etcd pins the etcd server command; `go build go.etcd.io/etcd/server/v3` builds it.
package etcd

import _ "go.etcd.io/etcd/server/v3"
