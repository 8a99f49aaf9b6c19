//go:build tools

// Package tools pins the control-plane binaries built by kube.sh:
//
//	go build k8s.io/kubernetes/cmd/kube-apiserver
//	go build k8s.io/kubernetes/cmd/kube-controller-manager
//	go build go.etcd.io/etcd/server/v3
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
