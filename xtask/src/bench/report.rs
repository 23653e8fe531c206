//! Summarising rounds (medians) and rendering the Markdown report with ratios.

use std::fmt::Write as _;

/// What one measurement of one setup in one scenario gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Completed requests.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th-percentile latency, µs.
    pub p99_us: f64,
    /// Failed requests (socket errors and statuses ≥ 400).
    pub errors: u64,
    /// The proxy's CPU time per request, µs (none for the direct run).
    pub cpu_us_per_request: Option<f64>,
    /// The proxy's peak RSS during the run, KiB (none for the direct run).
    pub peak_rss_kib: Option<u64>,
    /// Share of the run the load generator's core was busy (pinned runs only): near 1.0, the
    /// load generator and upstream, not the proxy, set the pace.
    pub load_core_busy: Option<f64>,
}

/// The rounds of one setup in one scenario, reduced: medians, the total of errors, the largest
/// peak RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median requests per second.
    pub rps: f64,
    /// Median of the per-round median latencies.
    pub p50_us: f64,
    /// Median of the per-round p99 latencies.
    pub p99_us: f64,
    /// Errors over all rounds.
    pub errors: u64,
    /// Median CPU µs per request.
    pub cpu_us_per_request: Option<f64>,
    /// Largest peak RSS seen.
    pub peak_rss_kib: Option<u64>,
    /// Median share of the time the load generator's core was busy.
    pub load_core_busy: Option<f64>,
    /// How many rounds.
    pub rounds: usize,
}

/// The median of `values` (the mean of the middle two for an even count); none when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Reduces the rounds of one setup; none when there are none.
pub fn summarise(samples: &[Sample]) -> Option<Summary> {
    let of = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Some(Summary {
        rps: of(|s| s.rps)?,
        p50_us: of(|s| s.p50_us)?,
        p99_us: of(|s| s.p99_us)?,
        errors: samples.iter().map(|s| s.errors).sum(),
        cpu_us_per_request: median(
            samples
                .iter()
                .filter_map(|s| s.cpu_us_per_request)
                .collect(),
        ),
        peak_rss_kib: samples.iter().filter_map(|s| s.peak_rss_kib).max(),
        load_core_busy: median(samples.iter().filter_map(|s| s.load_core_busy).collect()),
        rounds: samples.len(),
    })
}

/// One scenario's results: the three setups (any may be missing) and, for the deploy scenario,
/// a note on the deploys.
#[derive(Debug, Clone, Default)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Open connections.
    pub connections: u32,
    /// Concurrent HTTP/2 streams on each connection, for multiplexed loads.
    pub streams: Option<u32>,
    /// No proxy: the load generator straight to the upstream.
    pub direct: Option<Summary>,
    /// Through kamal-proxy.
    pub kamal: Option<Summary>,
    /// Through nginx.
    pub nginx: Option<Summary>,
    /// For deploy-under-load: kamal-proxy's steady keep-alive throughput to compare with.
    pub steady_rps: Option<f64>,
    /// Free-form remarks (deploy counts, skipped setups).
    pub note: String,
    /// kamal-proxy against nginx in each round on its own. The two ran one right after the
    /// other, so the host's speed, which drifts over minutes, is nearly the same for both.
    pub vs_nginx_rounds: Vec<RoundRatios>,
}

/// kamal-proxy's figures divided by nginx's, in one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundRatios {
    /// Requests per second.
    pub rps: f64,
    /// Proxy CPU time per request, when both were measured.
    pub cpu: Option<f64>,
    /// 99th-percentile latency.
    pub p99: f64,
}

/// Pairs kamal-proxy's and nginx's samples round by round (both in round order).
pub fn paired(kamal: &[Sample], nginx: &[Sample]) -> Vec<RoundRatios> {
    kamal
        .iter()
        .zip(nginx)
        .filter(|(_, n)| n.rps > 0.0 && n.p99_us > 0.0)
        .map(|(k, n)| RoundRatios {
            rps: k.rps / n.rps,
            cpu: match (k.cpu_us_per_request, n.cpu_us_per_request) {
                (Some(k), Some(n)) if n > 0.0 => Some(k / n),
                _ => None,
            },
            p99: k.p99_us / n.p99_us,
        })
        .collect()
}

/// `1.01× (0.82–1.03×)`: the median of `values` and their range.
pub fn median_and_range(values: Vec<f64>) -> Option<String> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mid = median(values)?;
    Some(format!("{mid:.2}× ({lo:.2}–{hi:.2}×)"))
}

/// `round by round against nginx, median (range): req/s …, CPU per request …, p99 …;`.
fn rounds_text(rounds: &[RoundRatios]) -> Option<String> {
    let rps = median_and_range(rounds.iter().map(|r| r.rps).collect())?;
    let p99 = median_and_range(rounds.iter().map(|r| r.p99).collect())?;
    let cpu = median_and_range(rounds.iter().filter_map(|r| r.cpu).collect())
        .map(|c| format!(", CPU per request {c}"))
        .unwrap_or_default();
    Some(format!(
        " round by round against nginx, median (range): req/s {rps}{cpu}, p99 {p99};"
    ))
}

/// `a / b` as `0.62×`, or `–` when either side is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// `58750` → `58,750`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds, readable: `850 µs`, `1.23 ms`.
pub fn latency(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn cpu(us: Option<f64>) -> String {
    us.map_or("–".into(), |us| format!("{us:.1} µs"))
}

fn rss(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |kib| {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    })
}

/// The Markdown table (one row per setup) followed by one line of ratios per scenario.
pub fn render(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | setup | req/s | p50 | p99 | proxy CPU / req | proxy peak RSS | errors | req/s vs no proxy | req/s vs nginx | CPU vs nginx |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for result in results {
        let nginx_rps = result.nginx.map(|s| s.rps);
        let nginx_cpu = result.nginx.and_then(|s| s.cpu_us_per_request);
        let direct_rps = result.direct.map(|s| s.rps);
        let rows = [
            ("no proxy", result.direct),
            ("kamal-proxy", result.kamal),
            ("nginx", result.nginx),
        ];
        for (setup, summary) in rows {
            let Some(s) = summary else { continue };
            let _ = writeln!(
                out,
                "| {} ({}) | {setup} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                result.name,
                load_label(result),
                thousands(s.rps),
                latency(s.p50_us),
                latency(s.p99_us),
                cpu(s.cpu_us_per_request),
                rss(s.peak_rss_kib),
                s.errors,
                ratio(Some(s.rps), direct_rps),
                ratio(Some(s.rps), nginx_rps),
                ratio(s.cpu_us_per_request, nginx_cpu),
            );
        }
    }
    out.push('\n');
    for result in results {
        let _ = writeln!(out, "- {}", summary_line(result));
    }
    out
}

/// `64 conns`, or `16 conns × 10 streams` for a multiplexed load.
fn load_label(result: &ScenarioResult) -> String {
    match result.streams {
        Some(streams) => format!("{} conns × {streams} streams", result.connections),
        None => format!("{} conns", result.connections),
    }
}

/// `keep-alive: kamal-proxy 0.62× no proxy, 1.40× nginx in req/s; …`.
pub fn summary_line(result: &ScenarioResult) -> String {
    let Some(kamal) = result.kamal else {
        return format!("{}: kamal-proxy not measured. {}", result.name, result.note)
            .trim_end()
            .to_string();
    };
    let mut line = format!("{}: kamal-proxy", result.name);
    if let Some(steady) = result.steady_rps {
        let _ = write!(
            line,
            " {} its steady keep-alive req/s during the deploys,",
            ratio(Some(kamal.rps), Some(steady))
        );
    }
    if let Some(direct) = result.direct {
        let _ = write!(
            line,
            " {} no proxy,",
            ratio(Some(kamal.rps), Some(direct.rps))
        );
    }
    if let Some(nginx) = result.nginx {
        let _ = write!(
            line,
            " {} nginx in req/s; CPU per request {} nginx; p99 {} nginx; peak RSS {} nginx,",
            ratio(Some(kamal.rps), Some(nginx.rps)),
            ratio(kamal.cpu_us_per_request, nginx.cpu_us_per_request),
            ratio(Some(kamal.p99_us), Some(nginx.p99_us)),
            ratio(
                kamal.peak_rss_kib.map(|k| k as f64),
                nginx.peak_rss_kib.map(|k| k as f64)
            ),
        );
    }
    if let Some(text) = rounds_text(&result.vs_nginx_rounds) {
        line.push_str(&text);
    }
    let _ = write!(line, " {} errors.", kamal.errors);
    if let (Some(k), Some(n)) = (
        kamal.load_core_busy,
        result.nginx.and_then(|n| n.load_core_busy),
    ) {
        let _ = write!(
            line,
            " Load generator's core busy: {:.0} % with kamal-proxy, {:.0} % with nginx.",
            k * 100.0,
            n * 100.0
        );
    }
    if !result.note.is_empty() {
        let _ = write!(line, " {}", result.note);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, cpu: Option<f64>, rss: Option<u64>) -> Sample {
        Sample {
            requests: 1,
            rps,
            p50_us: rps / 100.0,
            p99_us: rps / 10.0,
            errors: 1,
            cpu_us_per_request: cpu,
            peak_rss_kib: rss,
            load_core_busy: None,
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn summary_takes_medians_sums_errors_and_keeps_the_largest_rss() {
        let s = summarise(&[
            sample(100.0, Some(10.0), Some(5)),
            sample(300.0, Some(30.0), Some(9)),
            sample(200.0, Some(20.0), Some(7)),
        ])
        .unwrap();
        assert_eq!((s.rps, s.p50_us, s.p99_us), (200.0, 2.0, 20.0));
        assert_eq!((s.errors, s.rounds), (3, 3));
        assert_eq!(
            (s.cpu_us_per_request, s.peak_rss_kib),
            (Some(20.0), Some(9))
        );
        assert_eq!(summarise(&[]), None);
        let direct = summarise(&[sample(1.0, None, None)]).unwrap();
        assert_eq!(
            (direct.cpu_us_per_request, direct.peak_rss_kib),
            (None, None)
        );
    }

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(thousands(58750.4), "58,750");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(latency(850.2), "850 µs");
        assert_eq!(latency(1234.0), "1.23 ms");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25×");
        assert_eq!(ratio(Some(1.0), None), "–");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "–");
    }

    #[test]
    fn renders_rows_and_ratio_lines() {
        let result = ScenarioResult {
            name: "keep-alive".into(),
            connections: 64,
            direct: summarise(&[sample(100_000.0, None, None)]),
            kamal: summarise(&[sample(62_000.0, Some(15.0), Some(20 * 1024))]),
            nginx: summarise(&[sample(50_000.0, Some(20.0), Some(10 * 1024))]),
            ..Default::default()
        };
        let text = render(&[result]);
        assert!(text.contains(
            "| keep-alive (64 conns) | kamal-proxy | 62,000 | 620 µs | 6.20 ms | 15.0 µs | 20.0 MiB | 1 | 0.62× | 1.24× | 0.75× |"
        ), "{text}");
        assert!(text.contains("| keep-alive (64 conns) | no proxy | 100,000 |"));
        assert!(text.contains(
            "- keep-alive: kamal-proxy 0.62× no proxy, 1.24× nginx in req/s; CPU per request 0.75× nginx; p99 1.24× nginx; peak RSS 2.00× nginx, 1 errors."
        ), "{text}");
    }

    #[test]
    fn rounds_are_compared_in_pairs_and_their_range_shown() {
        let at = |rps, p99_us, busy| Sample {
            rps,
            p99_us,
            load_core_busy: Some(busy),
            ..sample(rps, Some(10.0), None)
        };
        let kamal = [
            at(55.0, 1_000.0, 0.99),
            at(60.0, 900.0, 0.97),
            at(44.0, 1_200.0, 0.994),
        ];
        let nginx = [
            at(50.0, 1_000.0, 0.98),
            at(60.0, 1_000.0, 0.98),
            at(55.0, 1_000.0, 0.5),
        ];
        let rounds = paired(&kamal, &nginx);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let expected = [(1.1, 1.0), (1.0, 0.9), (0.8, 1.2)];
        assert_eq!(rounds.len(), expected.len());
        for (got, want) in rounds.iter().zip(expected) {
            assert!(
                close(got.rps, want.0) && close(got.p99, want.1),
                "{rounds:?}"
            );
            assert!(close(got.cpu.unwrap(), 1.0), "{rounds:?}");
        }
        let result = ScenarioResult {
            name: "keep-alive".into(),
            connections: 64,
            kamal: summarise(&kamal),
            nginx: summarise(&nginx),
            vs_nginx_rounds: rounds,
            ..Default::default()
        };
        assert!(
            summary_line(&result).contains(
                "round by round against nginx, median (range): req/s 1.00× (0.80–1.10×), CPU per request 1.00× (1.00–1.00×), p99 1.00× (0.90–1.20×); 3 errors. Load generator's core busy: 99 % with kamal-proxy, 98 % with nginx."
            ),
            "{}",
            summary_line(&result)
        );
    }

    #[test]
    fn paired_ratios_read_as_median_and_range() {
        assert_eq!(
            median_and_range(vec![1.12, 0.74, 1.07]).as_deref(),
            Some("1.07× (0.74–1.12×)")
        );
        assert_eq!(median_and_range(Vec::new()), None);
    }

    #[test]
    fn multiplexed_rows_show_their_streams() {
        let result = ScenarioResult {
            name: "h2-tls".into(),
            connections: 16,
            streams: Some(10),
            kamal: summarise(&[sample(20_000.0, Some(40.0), Some(30 * 1024))]),
            nginx: summarise(&[sample(25_000.0, Some(30.0), Some(20 * 1024))]),
            ..Default::default()
        };
        let text = render(&[result]);
        assert!(
            text.contains("| h2-tls (16 conns × 10 streams) | kamal-proxy | 20,000 |"),
            "{text}"
        );
        assert!(!text.contains("| no proxy |"), "{text}");
    }

    #[test]
    fn deploy_line_compares_with_the_steady_state() {
        let result = ScenarioResult {
            name: "deploy-under-load".into(),
            connections: 64,
            kamal: summarise(&[sample(45_000.0, Some(15.0), None)]),
            steady_rps: Some(50_000.0),
            note: "20/20 deploys succeeded.".into(),
            ..Default::default()
        };
        assert_eq!(
            summary_line(&result),
            "deploy-under-load: kamal-proxy 0.90× its steady keep-alive req/s during the deploys, 1 errors. 20/20 deploys succeeded."
        );
    }
}
