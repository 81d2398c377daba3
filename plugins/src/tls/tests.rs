//! Setup tables, and handshakes in memory against a CA minted by rcgen:
//! ALPN, client certificate policies, resumption, and a certificate
//! replaced on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection};

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;

fn parse_text(text: &str) -> Result<TlsConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    setup::parse(&mut Dispenser::new("tls", &tokens)).map_err(|e| e.to_string())
}

#[test]
fn parse_table() {
    let ok = |text: &str, ca: Option<&str>, auth: ClientAuth| {
        let c = parse_text(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.cert, PathBuf::from("c.pem"), "{text}");
        assert_eq!(c.key, PathBuf::from("k.pem"), "{text}");
        assert_eq!(c.ca.as_deref(), ca.map(Path::new), "{text}");
        assert_eq!(c.client_auth, auth, "{text}");
    };
    ok("tls c.pem k.pem", None, ClientAuth::NoCert);
    ok("tls c.pem k.pem ca.pem", Some("ca.pem"), ClientAuth::NoCert);
    for (word, auth) in [
        ("nocert", ClientAuth::NoCert),
        ("request", ClientAuth::Request),
        ("require", ClientAuth::Require),
        ("verify_if_given", ClientAuth::VerifyIfGiven),
        ("require_and_verify", ClientAuth::RequireAndVerify),
    ] {
        ok(
            &format!("tls c.pem k.pem ca.pem {{\n client_auth {word}\n}}"),
            Some("ca.pem"),
            auth,
        );
    }
    for (text, want) in [
        (
            "tls",
            "Corefile:1: tls: automatic certificates (acme) not supported",
        ),
        (
            "tls {\n acme dns.example.org\n}",
            "Corefile:1: tls: automatic certificates (acme) not supported",
        ),
        ("tls c.pem", "Corefile:1: tls: wrong argument count"),
        ("tls a b c d", "Corefile:1: tls: wrong argument count"),
        (
            "tls c.pem k.pem {\n keylog /tmp/k\n}",
            "Corefile:2: tls: option 'keylog' not supported",
        ),
        (
            "tls c.pem k.pem {\n client_auth maybe\n}",
            "Corefile:2: tls: unknown authentication type 'maybe'",
        ),
        (
            "tls c.pem k.pem {\n client_auth\n}",
            "Corefile:2: tls: wrong argument count",
        ),
        (
            "tls c.pem k.pem {\n foo\n}",
            "Corefile:2: tls: unknown option 'foo'",
        ),
        (
            "tls c.pem k.pem\ntls c.pem k.pem",
            "Corefile:2: tls: TLS already configured",
        ),
    ] {
        let e = parse_text(text).unwrap_err();
        assert!(e.starts_with(want), "{text:?}: {e}");
    }
}

// === a test PKI on disk ===

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodedns-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let pki = Self { dir, ca };
        pki.issue("dns.example.test");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a server certificate for `name` (and its key) over the
    /// old ones, by rename, as a renewal tool does.
    fn issue(&self, name: &str) {
        let (cert, key) = self.leaf(name);
        for (file, text) in [("cert.pem", cert), ("key.pem", key)] {
            let tmp = self.path(&format!("{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(file)).unwrap();
        }
    }

    /// A certificate and key (PEM) for `name`, signed by the CA.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(&self, client_auth: ClientAuth) -> TlsConfig {
        TlsConfig {
            cert: self.path("cert.pem"),
            key: self.path("key.pem"),
            ca: Some(self.path("ca.pem")),
            client_auth,
        }
    }

    fn client(&self, alpn: &[&[u8]], cert: Option<&str>) -> Arc<ClientConfig> {
        self.client_with(alpn, cert.map(|name| self.leaf(name)))
    }

    /// A client trusting this CA, presenting `cert` (certificate and key).
    fn client_with(&self, alpn: &[&[u8]], cert: Option<(String, String)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut c = match cert {
            None => b.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
        };
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a handshake in memory; the client's connection when it succeeds.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let mut c = ClientConnection::new(
        Arc::clone(client),
        ServerName::try_from(name.to_string()).unwrap(),
    )?;
    let mut s = ServerConnection::new(Arc::clone(server))?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            // Let the client take the tickets sent after the handshake.
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

#[test]
fn alpn_is_the_transports() {
    let pki = Pki::new();
    let tls = TlsSettings::new(pki.config(ClientAuth::NoCert)).unwrap();
    for (server_alpn, client_alpn, want) in [
        (ALPN_DOT, &[b"dot".as_slice()][..], Some(b"dot".as_slice())),
        (ALPN_DOH, &[b"h2".as_slice(), b"http/1.1"], Some(b"h2")),
        (ALPN_DOH, &[b"http/1.1".as_slice()], Some(b"http/1.1")),
        // A client that offers none still gets in (dnsperf, older kdig).
        (ALPN_DOT, &[], None),
    ] {
        let (c, _) = handshake(
            &tls.server_config(server_alpn).unwrap(),
            &pki.client(client_alpn, None),
            "dns.example.test",
        )
        .unwrap();
        assert_eq!(c.alpn_protocol(), want);
    }
    // One that offers only something else is refused.
    assert!(
        handshake(
            &tls.server_config(ALPN_DOT).unwrap(),
            &pki.client(&[b"h2"], None),
            "dns.example.test"
        )
        .is_err()
    );
}

#[test]
fn client_auth_policies() {
    let pki = Pki::new();
    // A client certificate from another CA.
    let stranger = pki.client_with(&[], Some(Pki::new().leaf("client.example.test")));
    let mine = pki.client(&[], Some("client.example.test"));
    let none = pki.client(&[], None);
    for (auth, none_ok, mine_ok, stranger_ok) in [
        (ClientAuth::NoCert, true, true, true),
        (ClientAuth::Request, true, true, true),
        (ClientAuth::Require, false, true, true),
        (ClientAuth::VerifyIfGiven, true, true, false),
        (ClientAuth::RequireAndVerify, false, true, false),
    ] {
        let sc = TlsSettings::new(pki.config(auth))
            .unwrap()
            .server_config(ALPN_DOT)
            .unwrap();
        for (client, want, who) in [
            (&none, none_ok, "no certificate"),
            (&mine, mine_ok, "the CA's"),
            (&stranger, stranger_ok, "another CA's"),
        ] {
            let got = handshake(&sc, client, "dns.example.test").is_ok();
            assert_eq!(got, want, "{auth:?} with {who}");
        }
    }
}

#[test]
fn sessions_resume() {
    let pki = Pki::new();
    let tls = TlsSettings::new(pki.config(ClientAuth::NoCert)).unwrap();
    let sc = tls.server_config(ALPN_DOT).unwrap();
    let client = pki.client(&[b"dot"], None);
    let (c, _) = handshake(&sc, &client, "dns.example.test").unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let (c, _) = handshake(&sc, &client, "dns.example.test").unwrap();
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
}

#[test]
fn bad_files_are_configuration_errors() {
    let pki = Pki::new();
    let mut cfg = pki.config(ClientAuth::NoCert);
    cfg.cert = pki.path("missing.pem");
    let e = TlsSettings::new(cfg).unwrap_err().to_string();
    assert!(e.starts_with("reading certificate"), "{e}");
    // A key that is not the certificate's.
    let (_, other_key) = pki.leaf("other.example.test");
    std::fs::write(pki.path("other-key.pem"), other_key).unwrap();
    let mut cfg = pki.config(ClientAuth::NoCert);
    cfg.key = pki.path("other-key.pem");
    assert!(TlsSettings::new(cfg).is_err());
    // A CA file with no certificate in it.
    std::fs::write(pki.path("empty.pem"), "").unwrap();
    let mut cfg = pki.config(ClientAuth::RequireAndVerify);
    cfg.ca = Some(pki.path("empty.pem"));
    let e = TlsSettings::new(cfg).unwrap_err().to_string();
    assert!(e.starts_with("reading CA"), "{e}");
}

fn served_name(c: &ClientConnection) -> String {
    let cert = c.peer_certificates().unwrap()[0].clone();
    // rcgen puts the name in the SAN; find it in the DER.
    let der = cert.as_ref();
    for name in ["dns.example.test", "renewed.example.test"] {
        if der.windows(name.len()).any(|w| w == name.as_bytes()) {
            return name.to_string();
        }
    }
    panic!("unknown certificate served");
}

#[test]
fn a_replaced_certificate_is_served_after_the_next_check() {
    let pki = Pki::new();
    let tls = TlsSettings::new(pki.config(ClientAuth::NoCert)).unwrap();
    let sc = tls.server_config(ALPN_DOT).unwrap();
    // A fresh client each time: a resumed session would not show the
    // certificate served.
    let ask =
        |name: &str| handshake(&sc, &pki.client(&[], None), name).map(|(c, _)| served_name(&c));
    assert_eq!(ask("dns.example.test").unwrap(), "dns.example.test");
    pki.issue("renewed.example.test");
    // Within the check interval the old one is still served ...
    let now = u64::try_from(tls.resolver.epoch.elapsed().as_millis()).unwrap();
    tls.resolver.checked.store(now.max(1), Ordering::Relaxed);
    assert_eq!(ask("dns.example.test").unwrap(), "dns.example.test");
    // ... and once the interval has passed, the new one.
    // (0: no check yet, as if the interval had passed.)
    tls.resolver.checked.store(0, Ordering::Relaxed);
    assert_eq!(ask("renewed.example.test").unwrap(), "renewed.example.test");
    // A half-written renewal (garbage key) keeps the one in use.
    std::fs::write(pki.path("key.pem"), "not a key").unwrap();
    tls.resolver.check(true);
    assert_eq!(ask("renewed.example.test").unwrap(), "renewed.example.test");
}

#[test]
fn a_replaced_client_ca_is_used_after_the_next_check() {
    let pki = Pki::new();
    let other = Pki::new();
    let tls = TlsSettings::new(pki.config(ClientAuth::RequireAndVerify)).unwrap();
    let sc = tls.server_config(ALPN_DOT).unwrap();
    let mine = pki.client(&[], Some("client.example.test"));
    // Trusts our server's CA, presents a certificate from the other CA.
    let theirs = pki.client_with(&[], Some(other.leaf("client.example.test")));
    assert!(handshake(&sc, &mine, "dns.example.test").is_ok());
    assert!(handshake(&sc, &theirs, "dns.example.test").is_err());
    // The CA file now holds the other CA (by rename, as a rotation does).
    let tmp = pki.path("ca.pem.tmp");
    std::fs::copy(other.path("ca.pem"), &tmp).unwrap();
    std::fs::rename(&tmp, pki.path("ca.pem")).unwrap();
    // (0: no look yet, as if the interval had passed.)
    let ca = |tls: &TlsSettings| {
        tls.verifier_checked().store(0, Ordering::Relaxed);
    };
    ca(&tls);
    assert!(
        handshake(&sc, &theirs, "dns.example.test").is_ok(),
        "the new CA"
    );
    // (A fresh client: a resumed session keeps the authentication it had.)
    let mine_again = pki.client(&[], Some("client.example.test"));
    assert!(
        handshake(&sc, &mine_again, "dns.example.test").is_err(),
        "not the old one"
    );
    // A broken CA file keeps the one in use.
    std::fs::write(pki.path("ca.pem"), "not a certificate").unwrap();
    ca(&tls);
    let theirs_again = pki.client_with(&[], Some(other.leaf("client.example.test")));
    assert!(handshake(&sc, &theirs_again, "dns.example.test").is_ok());
}
