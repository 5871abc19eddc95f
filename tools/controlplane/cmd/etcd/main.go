// Command etcd is etcd's own server, built from the version k8s.io/kubernetes pins
// (Debian's etcd-server is too old for kube-apiserver's health checks).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
