// sluice-controlplane runs a real, single-process Kubernetes control plane on loopback for
// Sluice's tests and demos: embedded etcd, kube-apiserver and kube-controller-manager, wired
// through their options APIs (options -> Complete -> Validate -> Run).
//
// It writes an admin kubeconfig, prints exactly one line "READY <kubeconfig path>" on stdout
// once /readyz is ok and the controllers are working, and exits cleanly on SIGTERM/SIGINT or,
// with --exit-on-stdin-close, when its stdin is closed (so a crashed parent leaves no orphan).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

const (
	serviceCIDR = "10.96.0.0/16"
	issuer      = "https://kubernetes.default.svc.cluster.local"
)

// The controllers Sluice relies on (plus the two that make RBAC aggregation and in-pod CA
// bundles behave like a real cluster). Node lifecycle is deliberately absent: the process
// kubelet owns its node's health.
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"garbage-collector-controller",
	"horizontal-pod-autoscaler-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"namespace-controller",
	"endpointslice-controller",
	"clusterrole-aggregation-controller",
	"root-ca-certificate-publisher-controller",
}

type config struct {
	dataDir          string
	kubeconfig       string
	port             int
	exitOnStdinClose bool
	readyTimeout     time.Duration
	verbosity        int
}

func main() {
	var cfg config
	flag.StringVar(&cfg.dataDir, "data-dir", "", "directory for etcd data, certificates and tokens (default: a fresh temp dir, removed on exit)")
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig (default: <data-dir>/kubeconfig)")
	flag.IntVar(&cfg.port, "port", 0, "API server port on 127.0.0.1 (0 picks a free port)")
	flag.BoolVar(&cfg.exitOnStdinClose, "exit-on-stdin-close", false, "shut down when stdin reaches EOF")
	flag.DurationVar(&cfg.readyTimeout, "ready-timeout", 3*time.Minute, "give up if not ready within this time")
	flag.IntVar(&cfg.verbosity, "v", 0, "log verbosity of the Kubernetes components")
	flag.Parse()

	os.Exit(run(cfg))
}

func run(cfg config) int {
	klog.SetOutput(os.Stderr)
	removeDataDir := false
	if cfg.dataDir == "" {
		dir, err := os.MkdirTemp("", "sluice-controlplane-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			return 1
		}
		cfg.dataDir, removeDataDir = dir, true
	}
	dataDir, err := filepath.Abs(cfg.dataDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	cfg.dataDir = dataDir
	if cfg.kubeconfig == "" {
		cfg.kubeconfig = filepath.Join(cfg.dataDir, "kubeconfig")
	}
	defer func() {
		if removeDataDir {
			_ = os.RemoveAll(cfg.dataDir)
		}
	}()

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	go handleSignals(cancel)
	if cfg.exitOnStdinClose {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(errors.New("stdin closed"))
		}()
	}

	cp := &controlPlane{cfg: cfg}
	err = cp.start(ctx)
	if err == nil {
		fmt.Printf("READY %s\n", cfg.kubeconfig)
		_ = os.Stdout.Sync()
		klog.InfoS("control plane ready", "kubeconfig", cfg.kubeconfig, "startup", time.Since(cp.started).Round(time.Millisecond))
		select {
		case <-ctx.Done():
		case err = <-cp.failed:
		}
	}
	if cause := context.Cause(ctx); cause != nil && err == nil {
		klog.InfoS("shutting down", "reason", cause.Error())
	}
	cancel(errors.New("shutdown"))
	cp.stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-controlplane:", err)
		return 1
	}
	return 0
}

func handleSignals(cancel context.CancelCauseFunc) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	sig := <-ch
	cancel(fmt.Errorf("received %v", sig))
	sig = <-ch
	fmt.Fprintf(os.Stderr, "sluice-controlplane: second %v, exiting immediately\n", sig)
	os.Exit(1)
}

type controlPlane struct {
	cfg     config
	started time.Time
	etcd    *embed.Etcd
	pki     *pki
	// failed receives the first error of a component that stopped on its own.
	failed       chan error
	apiserverEnd chan struct{}
	kcmEnd       chan struct{}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (cp *controlPlane) start(ctx context.Context) error {
	cp.started = time.Now()
	cp.failed = make(chan error, 3)
	deadline, cancelDeadline := context.WithTimeout(ctx, cp.cfg.readyTimeout)
	defer cancelDeadline()

	serviceIP := net.IPv4(10, 96, 0, 1)
	p, err := ensurePKI(filepath.Join(cp.cfg.dataDir, "pki"), serviceIP)
	if err != nil {
		return err
	}
	cp.pki = p

	etcdURL, err := cp.startEtcd(deadline)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	klog.InfoS("etcd ready", "url", etcdURL, "after", time.Since(cp.started).Round(time.Millisecond))

	// Bind the API server's port ourselves so that "0" means a free port without a race.
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cp.cfg.port)))
	if err != nil {
		return fmt.Errorf("binding API server port: %w", err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	host := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	if err := cp.startAPIServer(ctx, listener, etcdURL); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}

	admin := &rest.Config{
		Host:            host,
		BearerToken:     p.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		QPS:             50,
		Burst:           100,
	}
	client, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return err
	}
	if err := cp.waitFor(deadline, "kube-apiserver /readyz", func(ctx context.Context) (bool, error) {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil, nil
	}); err != nil {
		return err
	}
	klog.InfoS("kube-apiserver ready", "host", host, "after", time.Since(cp.started).Round(time.Millisecond))

	if err := writeKubeconfig(cp.cfg.kubeconfig, host, p.caPEM, adminUser, p.adminToken); err != nil {
		return err
	}
	kcmKubeconfig := filepath.Join(cp.cfg.dataDir, "kube-controller-manager.kubeconfig")
	if err := writeKubeconfig(kcmKubeconfig, host, p.caPEM, kcmUser, p.kcmToken); err != nil {
		return err
	}

	if err := cp.startControllerManager(ctx, kcmKubeconfig); err != nil {
		return fmt.Errorf("kube-controller-manager: %w", err)
	}

	// The service-account controller creating "default" in "default" shows the controllers
	// run with working credentials; tests creating pods need exactly that.
	return cp.waitFor(deadline, "the default ServiceAccount (kube-controller-manager)", func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, nil
	})
}

// waitFor polls cond until it holds, a component fails, or the deadline passes.
func (cp *controlPlane) waitFor(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		reqCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := cond(reqCtx)
		cancel()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case err := <-cp.failed:
			return err
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.DeadlineExceeded) {
				return fmt.Errorf("interrupted while waiting for %s: %w", what, cause)
			}
			return fmt.Errorf("timed out after %v waiting for %s", cp.cfg.readyTimeout, what)
		case <-tick.C:
		}
	}
}

func (cp *controlPlane) startEtcd(ctx context.Context) (string, error) {
	clientPort, err := freePort()
	if err != nil {
		return "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", err
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}

	ec := embed.NewConfig()
	ec.Name = "sluice"
	ec.Dir = filepath.Join(cp.cfg.dataDir, "etcd")
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.Name + "=" + peerURL.String()
	ec.LogLevel = "error"
	// Test data in a temp dir: durability across power loss is not worth the fsync latency.
	ec.UnsafeNoFsync = true
	ec.QuotaBackendBytes = 2 << 30

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return "", err
	}
	cp.etcd = e
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return "", err
	case <-ctx.Done():
		return "", fmt.Errorf("not ready: %w", context.Cause(ctx))
	}
	go func() {
		if err, ok := <-e.Err(); ok && err != nil {
			cp.failed <- fmt.Errorf("etcd: %w", err)
		}
	}()
	return clientURL.String(), nil
}

// parseInto parses kube-style flags into the named flag sets of a component's options.
func parseInto(name string, fss []*pflag.FlagSet, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, f := range fss {
		fs.AddFlagSet(f)
	}
	return fs.Parse(args)
}

func (cp *controlPlane) startAPIServer(ctx context.Context, listener net.Listener, etcdURL string) error {
	p := cp.pki
	s := apiserveroptions.NewServerRunOptions()
	named := s.Flags()
	var sets []*pflag.FlagSet
	for _, f := range named.FlagSets {
		sets = append(sets, f)
	}
	args := []string{
		"--v=" + strconv.Itoa(cp.cfg.verbosity),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(listener.Addr().(*net.TCPAddr).Port),
		"--etcd-servers=" + etcdURL,
		"--tls-cert-file=" + p.servingCert,
		"--tls-private-key-file=" + p.servKey,
		"--client-ca-file=" + p.caCert,
		"--token-auth-file=" + p.tokenFile,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=" + issuer,
		"--api-audiences=" + issuer,
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		// The API server listens on loopback only, which an Endpoints object may not carry.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		// The aggregation layer (APIServices such as v1beta1.external.metrics.k8s.io served by the operator):
		// the aggregator authenticates to extension servers with the front-proxy client certificate and
		// names the user in request headers; extension servers read this configuration from the
		// kube-system/extension-apiserver-authentication ConfigMap. With aggregator routing the aggregator
		// dials a Service's endpoint addresses, as there is no kube-proxy for ClusterIPs.
		"--requestheader-client-ca-file=" + p.frontProxyCA,
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.frontProxyCert,
		"--proxy-client-key-file=" + p.frontProxyKey,
		"--enable-aggregator-routing=true",
		"--profiling=false",
		"--enable-priority-and-fairness=false",
	}
	if err := parseInto("kube-apiserver", sets, args); err != nil {
		return err
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	s.SecureServing.ServerCert.CertDirectory = filepath.Join(cp.cfg.dataDir, "pki")

	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	// The loopback clients of the API server should not log self-issued warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	cp.apiserverEnd = make(chan struct{})
	go func() {
		defer close(cp.apiserverEnd)
		if err := apiserverapp.Run(ctx, completed); err != nil {
			cp.failed <- fmt.Errorf("kube-apiserver: %w", err)
		} else if ctx.Err() == nil {
			cp.failed <- errors.New("kube-apiserver stopped")
		}
	}()
	return nil
}

func (cp *controlPlane) startControllerManager(ctx context.Context, kubeconfig string) error {
	p := cp.pki
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	known, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(known, disabled, aliases)
	var sets []*pflag.FlagSet
	for _, f := range named.FlagSets {
		sets = append(sets, f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		// No serving endpoint: nothing scrapes it and it would need another port.
		"--secure-port=0",
		"--controllers=" + strings.Join(controllers, ","),
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caCert,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--cluster-name=sluice",
		"--controller-start-interval=0s",
		"--horizontal-pod-autoscaler-sync-period=5s",
	}
	if err := parseInto("kube-controller-manager", sets, args); err != nil {
		return err
	}
	s.ParsedFlags = &named
	// Validate runs inside Config.
	c, err := s.Config(ctx, known, disabled, aliases)
	if err != nil {
		return err
	}
	cp.kcmEnd = make(chan struct{})
	go func() {
		defer close(cp.kcmEnd)
		if err := kcmapp.Run(ctx, c.Complete()); err != nil && ctx.Err() == nil {
			cp.failed <- fmt.Errorf("kube-controller-manager: %w", err)
		} else if ctx.Err() == nil {
			cp.failed <- errors.New("kube-controller-manager stopped")
		}
	}()
	return nil
}

func (cp *controlPlane) stop() {
	wait := func(name string, ch chan struct{}, d time.Duration) {
		if ch == nil {
			return
		}
		select {
		case <-ch:
		case <-time.After(d):
			klog.InfoS("component did not stop in time", "component", name, "timeout", d)
		}
	}
	wait("kube-controller-manager", cp.kcmEnd, 15*time.Second)
	wait("kube-apiserver", cp.apiserverEnd, 30*time.Second)
	if cp.etcd != nil {
		cp.etcd.Close()
	}
	klog.Flush()
}

func writeKubeconfig(path, host string, ca []byte, user, token string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["sluice"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: ca}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["sluice"] = &clientcmdapi.Context{Cluster: "sluice", AuthInfo: user, Namespace: "default"}
	kc.CurrentContext = "sluice"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Write then rename, so a reader never sees a half-written file.
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*kc, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
