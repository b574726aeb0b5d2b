//! scratch
use std::net::SocketAddr;
use std::time::Duration;
use surelink::{Bytes, CryptoConfig, Endpoint, EndpointConfig, Identity, ProtocolConfig, Security};

fn loopback() -> SocketAddr { "127.0.0.1:0".parse().unwrap() }
fn cfg(sec: Security) -> EndpointConfig {
    let mut p = ProtocolConfig::default();
    p.security = sec;
    EndpointConfig::default().with_protocol(p).with_connect_timeout(Duration::from_secs(5))
}
fn enc(f: impl FnOnce(&mut CryptoConfig)) -> Security { let mut c = CryptoConfig::default(); f(&mut c); Security::Encrypted(c) }

async fn case(name: &str, s: Security, c: Security) {
    let server = Endpoint::bind(loopback(), cfg(s)).unwrap();
    let client = Endpoint::client_with_config(loopback(), cfg(c)).unwrap();
    let t0 = std::time::Instant::now();
    let r = client.connect(server.local_addr()).await;
    println!("{name}: connect after {:?}: {:?}", t0.elapsed(), r.as_ref().map(|_| ()));
    if let Ok(conn) = r {
        let s = conn.send(Bytes::from_static(b"hello")).await;
        let cl = conn.close().await;
        println!("{name}:   send {s:?} close {cl:?} after {:?}", t0.elapsed());
    }
    let acc = tokio::time::timeout(Duration::from_millis(300), server.accept()).await;
    println!("{name}:   server accept: {:?}; stats {:?}", acc.map(|c| c.map(|c| c.peer_key())), server.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore() {
    let mut rng = rand::rngs::OsRng;
    let sid = Identity::generate(&mut rng);
    let cid = Identity::generate(&mut rng);
    let other = Identity::generate(&mut rng);
    case("ok", enc(|c| { c.identity = Some(sid.clone()); c.allow = Some(vec![cid.public()]); }), enc(|c| { c.identity = Some(cid.clone()); c.peer_key = Some(sid.public()); })).await;
    case("peer_key", enc(|c| { c.identity = Some(sid.clone()); }), enc(|c| { c.peer_key = Some(other.public()); })).await;
    case("allow", enc(|c| { c.allow = Some(vec![other.public()]); }), enc(|_| {})).await;
    case("psk", enc(|c| { c.psk = Some([1; 32]); }), enc(|c| { c.psk = Some([2; 32]); })).await;
    case("psk-only-server", enc(|c| { c.psk = Some([1; 32]); }), enc(|_| {})).await;
    case("psk-only-client", enc(|_| {}), enc(|c| { c.psk = Some([2; 32]); })).await;
    case("plain-client", enc(|_| {}), Security::InsecurePlaintext).await;
    case("plain-server", Security::InsecurePlaintext, enc(|_| {})).await;
    case("plain-both", Security::InsecurePlaintext, Security::InsecurePlaintext).await;
}
