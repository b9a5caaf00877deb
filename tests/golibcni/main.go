// golibcni drives a CNI network list with the real Go libcni (Debian's
// golang-github-appc-cni-dev, built in GOPATH mode), so the tests can compare
// libcni_py with the reference runtime on the same plugins and cache files.
//
//	golibcni add|check|del|cached  -conflist F -netns P -cid ID -cache DIR -path P1:P2 [-ifname eth0] [-capargs JSON] [-args K=V;K=V]
//	golibcni load -dir DIR -name NET
//	golibcni convert -to VERSION  < result.json
//
// Success: exit 0 and one JSON value on stdout (the result for add/cached, the
// parsed list for load, the converted result for convert, {} for check/del). Failure: exit 1 and
// {"error": msg, "code": n} on stdout (code 0 when the error is not a CNI error).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: golibcni add|check|del|cached|load|convert [flags]"))
	}
	verb := os.Args[1]
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	conflist := fs.String("conflist", "", "network list file")
	dir := fs.String("dir", "", "config directory (load)")
	name := fs.String("name", "", "network name (load)")
	netns := fs.String("netns", "", "netns path")
	cid := fs.String("cid", "", "container ID")
	ifname := fs.String("ifname", "eth0", "interface name")
	cache := fs.String("cache", "", "cache dir")
	path := fs.String("path", "", "CNI_PATH")
	to := fs.String("to", "", "target result version (convert)")
	capArgs := fs.String("capargs", "", "capability args as a JSON object")
	cniArgs := fs.String("args", "", "CNI_ARGS as K=V;K=V")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(err)
	}
	if verb == "convert" {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			fail(err)
		}
		res, err := create.CreateFromBytes(data)
		if err != nil {
			fail(err)
		}
		if res, err = res.GetAsVersion(*to); err != nil {
			fail(err)
		}
		printJSON(res)
		return
	}
	if verb == "load" {
		list, err := libcni.LoadConfList(*dir, *name)
		if err != nil {
			fail(err)
		}
		printJSON(describeList(list))
		return
	}

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: *cid, NetNS: *netns, IfName: *ifname}
	if *capArgs != "" {
		if err := json.Unmarshal([]byte(*capArgs), &rt.CapabilityArgs); err != nil {
			fail(err)
		}
	}
	for _, pair := range strings.Split(*cniArgs, ";") {
		if kv := strings.SplitN(pair, "=", 2); len(kv) == 2 {
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(*path, ":"), *cache, nil)
	ctx := context.Background()

	switch verb {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		printJSON(res)
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
		printJSON(struct{}{})
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
		printJSON(struct{}{})
	case "cached":
		res, err := cni.GetNetworkListCachedResult(list, rt)
		if err != nil {
			fail(err)
		}
		printJSON(res)
	default:
		fail(fmt.Errorf("unknown verb %q", verb))
	}
}

// describeList shows what libcni made of a configuration: the list fields and
// each plugin's config exactly as it will be sent (before injection).
func describeList(list *libcni.NetworkConfigList) map[string]interface{} {
	plugins := []json.RawMessage{}
	for _, p := range list.Plugins {
		plugins = append(plugins, json.RawMessage(p.Bytes))
	}
	return map[string]interface{}{
		"name":         list.Name,
		"cniVersion":   list.CNIVersion,
		"disableCheck": list.DisableCheck,
		"plugins":      plugins,
		"bytes":        string(list.Bytes),
	}
}

func printJSON(v interface{}) {
	data, err := json.Marshal(v)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(data))
}

func fail(err error) {
	code := uint(0)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	data, _ := json.Marshal(map[string]interface{}{"error": err.Error(), "code": code})
	fmt.Println(string(data))
	os.Exit(1)
}
