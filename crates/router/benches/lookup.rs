//! Route lookups in tables of 10, 1,000 and 10,000 hosts: the cost must not grow with the
//! number of hosts (hash-map host levels, a handful of prefixes per host).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kamal_router::{RouteTable, RouteTableBuilder};

/// `hosts` exact hosts at `/` and `/api`, `hosts / 10` one-label wildcards at `/`, and a
/// default service bound only at `/app` (so a miss is a request for another default path).
fn table(hosts: usize) -> RouteTable<usize> {
    let mut builder = RouteTableBuilder::new();
    let prefixes = ["/".to_string(), "/api".to_string()];
    for i in 0..hosts {
        let host = vec![format!("host{i}.example.com")];
        builder
            .insert(&format!("svc{i}"), &host, &prefixes, i)
            .expect("distinct hosts never conflict");
    }
    for i in 0..(hosts / 10).max(1) {
        let host = vec![format!("*.wild{i}.test")];
        builder
            .insert(&format!("wild{i}"), &host, &[], hosts + i)
            .expect("distinct wildcards never conflict");
    }
    builder
        .insert("default", &[], &["/app".to_string()], usize::MAX)
        .expect("one default service");
    builder.build()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for hosts in [10usize, 1_000, 10_000] {
        let table = table(hosts);
        let exact = format!("host{}.example.com", hosts / 2);
        let wildcard = format!("tenant.wild{}.test", (hosts / 10).max(1) / 2);
        let cases: [(&str, &str, &str, bool); 4] = [
            ("exact", &exact, "/api/users/1", true),
            ("wildcard", &wildcard, "/dashboard", true),
            ("default", "unknown.test", "/app/x", true),
            ("miss", "unknown.test", "/other", false),
        ];
        for (name, host, path, hit) in cases {
            assert_eq!(
                table.lookup(host, path).is_some(),
                hit,
                "{name} with {hosts} hosts"
            );
            group.bench_with_input(
                BenchmarkId::new(name, hosts),
                &(host, path),
                |b, &(h, p)| {
                    b.iter(|| black_box(table.lookup(black_box(h), black_box(p))).is_some())
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
