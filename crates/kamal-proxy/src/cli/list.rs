//! `list` output: upstream's ANSI table, byte for byte, and our `--json` document.

use kamal_control::{ServiceDescription, TargetDescription};

/// ANSI style of the header cells (italic, bright blue).
const HEADER_STYLE: &str = "3;94";
/// ANSI style of the first cell of each data row (bold blue).
const NAME_STYLE: &str = "1;34";

/// Renders the services as upstream's table: header `Service Host Path Target State TLS`, one row
/// per service sorted by name; every cell is `ESC[<style>m<text>ESC[0m`, padded to the column
/// width (in bytes) and followed by two spaces; colours are emitted even when not on a terminal.
pub(crate) fn render_table(services: &[ServiceDescription]) -> String {
    let mut sorted: Vec<&ServiceDescription> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));

    let mut rows: Vec<[String; 6]> = Vec::with_capacity(sorted.len() + 1);
    rows.push(["Service", "Host", "Path", "Target", "State", "TLS"].map(String::from));
    for service in sorted {
        let hosts = service.hosts.join(",");
        rows.push([
            service.name.clone(),
            if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts
            },
            service.paths.join(","),
            addresses(&service.targets, &service.readers),
            service.state.clone(),
            if service.tls { "yes" } else { "no" }.to_string(),
        ]);
    }

    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }

    let mut out = String::new();
    for (row_number, row) in rows.iter().enumerate() {
        for (column, cell) in row.iter().enumerate() {
            let style = match (row_number, column) {
                (0, _) => HEADER_STYLE,
                (_, 0) => NAME_STYLE,
                _ => "",
            };
            out.push_str("\x1b[");
            out.push_str(style);
            out.push('m');
            out.push_str(cell);
            out.push_str("\x1b[0m");
            out.push_str(&" ".repeat(widths[column] - cell.len() + 2));
        }
        out.push('\n');
    }
    out
}

/// Writers then readers, comma-separated, in deploy order.
fn addresses(targets: &[TargetDescription], readers: &[TargetDescription]) -> String {
    targets
        .iter()
        .chain(readers)
        .map(|t| t.address.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders the services as one pretty-printed JSON array (sorted by name) with every field.
pub(crate) fn render_json(services: &[ServiceDescription]) -> Result<String, serde_json::Error> {
    let mut sorted: Vec<&ServiceDescription> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let mut text = serde_json::to_string_pretty(&sorted)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(address: &str) -> TargetDescription {
        TargetDescription {
            address: address.to_string(),
            state: "healthy".to_string(),
        }
    }

    fn service(
        name: &str,
        hosts: &[&str],
        paths: &[&str],
        state: &str,
        tls: bool,
    ) -> ServiceDescription {
        ServiceDescription {
            name: name.to_string(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            targets: vec![target("127.0.0.1:3000")],
            state: state.to_string(),
            tls,
            ..Default::default()
        }
    }

    #[test]
    fn empty_list_prints_only_the_header() {
        assert_eq!(
            render_table(&[]),
            "\x1b[3;94mService\x1b[0m  \x1b[3;94mHost\x1b[0m  \x1b[3;94mPath\x1b[0m  \
             \x1b[3;94mTarget\x1b[0m  \x1b[3;94mState\x1b[0m  \x1b[3;94mTLS\x1b[0m  \n"
        );
    }

    #[test]
    fn one_service_without_hosts_matches_upstream_bytes() {
        // Appendix E: `*` for no host, two spaces after every cell including the last.
        let table = render_table(&[service("svc1", &[""], &["/"], "running", false)]);
        let want = concat!(
            "\x1b[3;94mService\x1b[0m  \x1b[3;94mHost\x1b[0m  \x1b[3;94mPath\x1b[0m  ",
            "\x1b[3;94mTarget\x1b[0m          \x1b[3;94mState\x1b[0m    \x1b[3;94mTLS\x1b[0m  \n",
            "\x1b[1;34msvc1\x1b[0m     \x1b[m*\x1b[0m     \x1b[m/\x1b[0m     ",
            "\x1b[m127.0.0.1:3000\x1b[0m  \x1b[mrunning\x1b[0m  \x1b[mno\x1b[0m   \n",
        );
        assert_eq!(table, want);
    }

    #[test]
    fn rows_are_sorted_and_columns_joined() {
        let mut b = service(
            "b",
            &["b.test", "c.test"],
            &["/api", "/app"],
            "paused",
            true,
        );
        b.readers = vec![target("10.0.0.2:80")];
        b.rollout_targets = vec![target("10.0.0.9:80")];
        let a = service("a", &[], &["/"], "stopped", false);
        let table = render_table(&[b, a]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("\x1b[1;34ma\x1b[0m"), "{table:?}");
        assert!(lines[1].contains("\x1b[m*\x1b[0m"), "no hosts shows *");
        assert!(lines[1].contains("\x1b[mstopped\x1b[0m"));
        assert!(lines[2].contains("\x1b[mb.test,c.test\x1b[0m"));
        assert!(lines[2].contains("\x1b[m/api,/app\x1b[0m"));
        assert!(
            lines[2].contains("\x1b[m127.0.0.1:3000,10.0.0.2:80\x1b[0m"),
            "rollout targets not shown"
        );
        assert!(lines[2].contains("\x1b[myes\x1b[0m"));
        assert!(!table.contains("10.0.0.9"));
    }

    #[test]
    fn json_has_every_field_sorted_by_name() {
        let services = [
            service("z", &["z.test"], &["/"], "running", true),
            service("a", &[], &["/"], "paused", false),
        ];
        let text = render_json(&services).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let array = value.as_array().unwrap();
        assert_eq!(array[0]["name"], "a");
        assert_eq!(array[1]["name"], "z");
        for key in [
            "name",
            "hosts",
            "paths",
            "targets",
            "readers",
            "rollout_targets",
            "rollout_readers",
            "state",
            "tls",
            "stop_message",
        ] {
            assert!(array[0].get(key).is_some(), "missing {key}");
        }
        assert_eq!(array[1]["targets"][0]["address"], "127.0.0.1:3000");
    }
}
