//! `/metrics` read back by a Prometheus text parser (the `prometheus-parse` crate): the counters
//! match a known number of OPTIONS, reloads and refused connections, and every process has its
//! memory.

mod common;
mod observe_util;

use common::*;
use observe_util::*;
use prometheus_parse::{Sample, Scrape, Value};

fn scrape(e: &Endpoints) -> Scrape {
    let r = http(e.metrics, "GET", "/metrics", b"");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.head
            .contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        r.head
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn number(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}: not a number: {other:?}", s.metric),
    }
}

/// The samples of `metric` whose labels include `labels`.
fn find<'a>(s: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

fn one(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(s, metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    number(found[0])
}

fn sum(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(s, metric, labels).iter().map(|x| number(x)).sum()
}

#[test]
fn metrics_count_the_options_sent_the_reloads_and_refused_connections() {
    let (d, e) = observed(
        "obs-metrics",
        false,
        "",
        "[tcp]\nworkers = 1\nmax_connections = 1\n",
    );
    let (pa, pb, pt) = (
        free_udp_port("127.0.0.1"),
        free_udp_port("127.0.0.1"),
        free_tcp_port("127.0.0.1"),
    );
    let (a, b, t) = (
        format!("udp:127.0.0.1:{pa}"),
        format!("udp:127.0.0.1:{pb}"),
        format!("tcp:127.0.0.1:{pt}"),
    );
    d.add(&a, &["--tag", "alpha"]);
    d.add(&b, &["--tag", "beta"]);
    d.add(&t, &[]);
    d.reload_ok();
    let before = scrape(&e);
    let udp_before = sum(
        &before,
        "sipsockd_worker_received_total",
        &[("kind", "udp")],
    );
    send_options(pa, 11, 1000);
    send_options(pb, 4, 2000);
    // One connection is served; the next is refused (max_connections = 1).
    let mut held = tcp_connect(pt);
    assert!(tcp_options(&mut held, pt, 1).is_some());
    let mut refused = tcp_connect(pt);
    assert!(
        closed_by_peer(&mut refused),
        "the second connection is closed"
    );

    let s = wait_for(
        "the counters",
        || scrape(&e),
        |s| {
            one(s, "sipsockd_socket_received_total", &[("socket", &a)]) == 11.0
                && one(s, "sipsockd_socket_received_total", &[("socket", &b)]) == 4.0
                && one(s, "sipsockd_stream_connections_refused_total", &[]) == 1.0
        },
    );
    let labels_a = [("socket", a.as_str()), ("proto", "udp"), ("tag", "alpha")];
    assert_eq!(one(&s, "sipsockd_socket_received_total", &labels_a), 11.0);
    assert_eq!(
        one(
            &s,
            "sipsockd_socket_received_total",
            &[("socket", &t), ("proto", "tcp")]
        ),
        1.0
    );
    let udp_rx = sum(&s, "sipsockd_worker_received_total", &[("kind", "udp")]);
    assert_eq!(udp_rx - udp_before, 15.0);
    assert_eq!(
        sum(&s, "sipsockd_worker_replied_total", &[("kind", "udp")])
            - sum(&before, "sipsockd_worker_replied_total", &[("kind", "udp")]),
        15.0
    );
    assert_eq!(
        one(
            &s,
            "sipsockd_socket_state",
            &[("socket", &a), ("state", "active")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &s,
            "sipsockd_socket_state",
            &[("socket", &a), ("state", "error")]
        ),
        0.0
    );
    assert_eq!(
        one(&s, "sipsockd_socket_connections", &[("socket", &t)]),
        1.0
    );
    assert_eq!(one(&s, "sipsockd_stream_connections", &[]), 1.0);
    assert_eq!(
        one(
            &s,
            "sipsockd_worker_connections",
            &[("kind", "stream"), ("rank", "0")]
        ),
        1.0
    );
    assert_eq!(
        one(&s, "sipsockd_worker_up", &[("kind", "udp"), ("rank", "1")]),
        1.0
    );
    assert_eq!(one(&s, "sipsockd_slots_used", &[]), 3.0);
    assert_eq!(one(&s, "sipsockd_slots_total", &[]), 100.0);

    // Reloads: the initial load and ours, both OK, in the histogram too.
    let reloads = one(&s, "sipsockd_reloads_total", &[]);
    assert_eq!(reloads, 2.0);
    assert_eq!(one(&s, "sipsockd_reload_failures_total", &[]), 0.0);
    assert_eq!(one(&s, "sipsockd_last_reload_status", &[]), 200.0);
    let count = one(&s, "sipsockd_reload_duration_seconds_count", &[]);
    assert_eq!(count, reloads);
    let hist = find(&s, "sipsockd_reload_duration_seconds", &[]);
    assert_eq!(hist.len(), 1, "{hist:?}");
    let Value::Histogram(buckets) = &hist[0].value else {
        panic!("{hist:?}")
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, reloads);
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );

    // Memory of the supervisor and of each of the 3 workers (2 UDP, 1 stream).
    let mem = find(&s, "sipsockd_process_resident_memory_bytes", &[]);
    assert_eq!(mem.len(), 4, "{mem:?}");
    assert!(mem.iter().all(|m| number(m) > 0.0), "{mem:?}");
    assert_eq!(
        find(
            &s,
            "sipsockd_process_resident_memory_bytes",
            &[("kind", "supervisor")]
        )
        .len(),
        1
    );

    assert_eq!(http(e.metrics, "GET", "/other", b"").status, 404);
    assert_eq!(http(e.metrics, "POST", "/metrics", b"").status, 405);
    drop(held);
    d.stop();
}
