//! `--metrics`: scraped over HTTP during a transfer (send → impair → recv,
//! all on 127.0.0.1) and read with a Prometheus text parser; the latency
//! and RTT histograms checked against themselves and against the JSON
//! stats lines.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use prometheus_parse::{HistogramCount, Sample, Scrape, Value};
use support::Proc;

/// Datagrams sent through the gateway.
const MESSAGES: usize = 20;
/// Bound on any one socket read or write of the test.
const IO_LIMIT: Duration = Duration::from_secs(30);

/// `GET /metrics` with the given Accept header; the response's head and body.
fn get_metrics(addr: SocketAddr, accept: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics server");
    stream.set_read_timeout(Some(IO_LIMIT)).unwrap();
    stream.set_write_timeout(Some(IO_LIMIT)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

/// A scrape in the Prometheus text format, parsed.
fn scrape(addr: SocketAddr) -> Scrape {
    let (head, body) = get_metrics(addr, "text/plain");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Value {
    let matches =
        |s: &&Sample| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
    match scrape.samples.iter().find(matches) {
        Some(sample) => sample.value.clone(),
        None => panic!("no {name} {labels:?} in {:#?}", scrape.samples),
    }
}

/// The buckets of the histogram `name` whose labels include `labels`,
/// checked to be a well-formed histogram: bounds increasing up to `+Inf`,
/// counts cumulative (never decreasing), the `+Inf` bucket equal to
/// `name_count`, and `name_sum` present. Returns the buckets.
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<HistogramCount> {
    let Value::Histogram(mut buckets) = value(scrape, name, labels) else {
        panic!("{name} is not a histogram");
    };
    buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(buckets.len() > 2, "{buckets:?}");
    assert_eq!(buckets.last().unwrap().less_than, f64::INFINITY);
    assert!(
        buckets.windows(2).all(|w| w[0].less_than < w[1].less_than),
        "distinct bounds: {buckets:?}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative, monotone: {buckets:?}"
    );
    let count = value(scrape, &format!("{name}_count"), labels);
    assert_eq!(
        count,
        Value::Untyped(buckets.last().unwrap().count),
        "+Inf bucket == _count"
    );
    assert!(matches!(
        value(scrape, &format!("{name}_sum"), labels),
        Value::Untyped(sum) if sum >= 0.0
    ));
    buckets
}

#[test]
fn send_recv_and_impair_serve_their_statistics_during_a_transfer() {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(IO_LIMIT)).unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();

    let mut recv = Proc::spawn(
        "recv",
        &[
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &format!("udp://{sink_addr}"),
            "--metrics",
            "127.0.0.1:0",
            "--stats-interval",
            "100ms",
        ],
    );
    let recv_metrics = recv.addr_after("serving metrics on ");
    let recv_addr = recv.listening_addr().to_string();

    let mut impair = Proc::spawn(
        "impair",
        &[
            "impair",
            "--listen",
            "127.0.0.1:0",
            "--target",
            &recv_addr,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let impair_metrics = impair.addr_after("serving metrics on ");
    let impair_addr = impair.listening_addr().to_string();

    let mut send = Proc::spawn(
        "send",
        &[
            "send",
            "--to",
            &impair_addr,
            "--from",
            "udp://127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let send_metrics = send.addr_after("serving metrics on ");
    let gateway = send.addr_after("gateway listening on ");

    // The transfer: every datagram comes out of the receiver's side.
    let source = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..MESSAGES {
        source
            .send_to(format!("message {i}").as_bytes(), gateway)
            .unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..MESSAGES {
        sink.recv_from(&mut buf)
            .expect("every message is forwarded to the sink");
    }

    // The connection is still up: scrape all three.
    let sent = scrape(send_metrics);
    let send_labels = [("role", "send"), ("remote", impair_addr.as_str())];
    assert_eq!(
        value(&sent, "surelink_messages_sent_total", &send_labels),
        Value::Counter(MESSAGES as f64)
    );
    let Value::Gauge(rtt) = value(&sent, "surelink_rtt_seconds", &send_labels) else {
        panic!("the RTT is a gauge");
    };
    assert!(rtt > 0.0 && rtt < 30.0, "RTT in seconds: {rtt}");
    let Value::Counter(path_packets) = value(
        &sent,
        "surelink_path_packets_sent_total",
        &[("path", "0"), ("path_remote", impair_addr.as_str())],
    ) else {
        panic!("per-path packets are a counter");
    };
    assert!(path_packets > 0.0, "{path_packets}");
    assert!(matches!(
        value(&sent, "surelink_socket_sent_bytes_total", &[]),
        Value::Counter(bytes) if bytes > 0.0
    ));

    let received = scrape(recv_metrics);
    assert_eq!(
        value(
            &received,
            "surelink_messages_delivered_total",
            &[("role", "recv")]
        ),
        Value::Counter(MESSAGES as f64)
    );
    assert_eq!(
        value(&received, "surelink_endpoint_accepted_total", &[]),
        Value::Counter(1.0)
    );
    assert!(matches!(
        value(
            &received,
            "surelink_message_latency_seconds",
            &[("quantile", "0.99")]
        ),
        Value::Gauge(_)
    ));
    // One latency sample per message taken, as the JSON stats report it
    // (every message was delivered: no sample comes after).
    let latency = histogram(
        &received,
        "surelink_one_way_latency_seconds",
        &[("role", "recv")],
    );
    assert_eq!(latency.last().unwrap().count, MESSAGES as f64);
    let stats_line = (0..100)
        .filter_map(|_| recv.find_line("\"role\":\"recv\"", IO_LIMIT))
        .map(|line| serde_json::from_str::<serde_json::Value>(&line).expect("a JSON line"))
        .find(|stats| stats["messages_delivered"] == MESSAGES)
        .expect("a stats line after the transfer");
    let json_latency = &stats_line["latency_histogram_us"];
    assert_eq!(json_latency["count"], MESSAGES, "{json_latency}");
    let json_buckets = json_latency["buckets"].as_object().expect("buckets");
    let json_total: u64 = json_buckets.values().filter_map(|n| n.as_u64()).sum();
    assert_eq!(json_total, MESSAGES as u64, "{json_latency}");
    // RTT samples: the sender takes them from every acknowledgement.
    let rtt = histogram(&sent, "surelink_rtt_sample_seconds", &send_labels);
    assert!(rtt.last().unwrap().count > 0.0, "{rtt:?}");

    let impaired = scrape(impair_metrics);
    let Value::Counter(upstream) = value(
        &impaired,
        "surelink_impair_forwarded_total",
        &[("direction", "upstream")],
    ) else {
        panic!("forwarded datagrams are a counter");
    };
    assert!(upstream > 0.0, "{upstream}");

    // OpenMetrics for clients that ask for it.
    let (head, body) = get_metrics(send_metrics, "application/openmetrics-text; version=1.0.0");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        body.contains("# TYPE surelink_messages_sent counter\n"),
        "{body}"
    );
    assert_eq!(body.lines().last(), Some("# EOF"));

    send.terminate();
    send.wait_success();
    recv.kill();
    impair.kill();
}
