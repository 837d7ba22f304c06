package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of the generated credentials. Everything is generated once per data
// directory, so restarting on the same directory keeps tokens and certificates valid.
type pki struct {
	caCert, caKey        string
	servingCert, servKey string
	// The front proxy: the CA extension API servers trust for the aggregator's requests
	// (--requestheader-client-ca-file) and the client certificate the aggregator presents.
	frontProxyCA, frontProxyCAKey string
	frontProxyCert, frontProxyKey string
	saKey, saPub                  string
	tokenFile                     string
	adminToken, kcmToken          string
	caPEM                         []byte
}

const (
	adminUser = "sluice-admin"
	kcmUser   = "system:kube-controller-manager"
	// The common name of the aggregator's client certificate (--requestheader-allowed-names).
	frontProxyClient = "front-proxy-client"
)

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
}

// ensurePKI creates (if missing) a CA, a serving certificate for the API server signed by it,
// the service-account signing key pair and the static token file.
func ensurePKI(dir string, serviceIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{
		caCert:      filepath.Join(dir, "ca.crt"),
		caKey:       filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"),
		servKey:     filepath.Join(dir, "apiserver.key"),
		saKey:       filepath.Join(dir, "sa.key"),
		saPub:       filepath.Join(dir, "sa.pub"),
		tokenFile:   filepath.Join(dir, "tokens.csv"),

		frontProxyCA:    filepath.Join(dir, "front-proxy-ca.crt"),
		frontProxyCAKey: filepath.Join(dir, "front-proxy-ca.key"),
		frontProxyCert:  filepath.Join(dir, "front-proxy-client.crt"),
		frontProxyKey:   filepath.Join(dir, "front-proxy-client.key"),
	}

	if !exists(p.caCert) || !exists(p.caKey) || !exists(p.servingCert) || !exists(p.servKey) {
		if err := p.generateCerts(serviceIP); err != nil {
			return nil, fmt.Errorf("generating certificates: %w", err)
		}
	}
	if !exists(p.frontProxyCA) || !exists(p.frontProxyCAKey) || !exists(p.frontProxyCert) || !exists(p.frontProxyKey) {
		if err := p.generateFrontProxy(); err != nil {
			return nil, fmt.Errorf("generating front-proxy certificates: %w", err)
		}
	}
	if !exists(p.saKey) || !exists(p.saPub) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		if err := writePEM(p.saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), 0o600); err != nil {
			return nil, err
		}
		pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
		if err != nil {
			return nil, err
		}
		if err := writePEM(p.saPub, "PUBLIC KEY", pub, 0o644); err != nil {
			return nil, err
		}
	}
	if err := p.ensureTokens(); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, err
	}
	p.caPEM = ca
	return p, nil
}

func (p *pki) generateCerts(serviceIP net.IP) error {
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "sluice-local-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}

	servKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err = serial()
	if err != nil {
		return err
	}
	servTmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, serviceIP},
	}
	servDER, err := x509.CreateCertificate(rand.Reader, servTmpl, caCert, &servKey.PublicKey, caKey)
	if err != nil {
		return err
	}

	if err := writeKey(p.caKey, caKey); err != nil {
		return err
	}
	if err := writePEM(p.caCert, "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writeKey(p.servKey, servKey); err != nil {
		return err
	}
	return writePEM(p.servingCert, "CERTIFICATE", servDER, 0o644)
}

// generateFrontProxy creates a CA of its own for the aggregator's client certificate (as kubeadm does:
// extension API servers trust it for requestheader authentication only) and that certificate.
func (p *pki) generateFrontProxy() error {
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "sluice-front-proxy-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	clientKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if sn, err = serial(); err != nil {
		return err
	}
	clientTmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: frontProxyClient},
		NotBefore:    now,
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	clientDER, err := x509.CreateCertificate(rand.Reader, clientTmpl, caCert, &clientKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writeKey(p.frontProxyCAKey, caKey); err != nil {
		return err
	}
	if err := writePEM(p.frontProxyCA, "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writeKey(p.frontProxyKey, clientKey); err != nil {
		return err
	}
	return writePEM(p.frontProxyCert, "CERTIFICATE", clientDER, 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

// ensureTokens writes the static token file (token,user,uid,"groups") read by the API server.
func (p *pki) ensureTokens() error {
	adminFile := p.tokenFile + ".admin"
	kcmFile := p.tokenFile + ".kcm"
	if exists(p.tokenFile) && exists(adminFile) && exists(kcmFile) {
		a, err := os.ReadFile(adminFile)
		if err != nil {
			return err
		}
		k, err := os.ReadFile(kcmFile)
		if err != nil {
			return err
		}
		p.adminToken, p.kcmToken = string(a), string(k)
		if p.adminToken == "" || p.kcmToken == "" {
			return errors.New("empty token file in data dir")
		}
		return nil
	}
	var err error
	if p.adminToken, err = randomToken(); err != nil {
		return err
	}
	if p.kcmToken, err = randomToken(); err != nil {
		return err
	}
	csv := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n%s,%s,%s\n",
		p.adminToken, adminUser, "sluice-admin-uid",
		p.kcmToken, kcmUser, "kube-controller-manager-uid")
	if err := os.WriteFile(p.tokenFile, []byte(csv), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(adminFile, []byte(p.adminToken), 0o600); err != nil {
		return err
	}
	return os.WriteFile(kcmFile, []byte(p.kcmToken), 0o600)
}
