//! The routing table: build once per change, then look up per request without locks.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::host::{host_without_port, normalize_host, with_lookup_form};
use crate::path::{decode, matches_prefix, with_trailing_slash};
use crate::RouteError;

/// Host maps use a small multiply-rotate hash instead of SipHash: lookups hash every request's
/// host (up to three times), and the keys stored are the operator's own configuration, so
/// hash flooding through insertion is not possible.
type HostMap = HashMap<Box<str>, usize, BuildHasherDefault<HostHasher>>;

/// The FxHash word-at-a-time scheme (as in rustc): fast on short strings, good enough spread.
#[derive(Default)]
struct HostHasher {
    hash: u64,
}

impl HostHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for HostHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// One owner's insertion: who it is and the value its bindings route to.
#[derive(Debug)]
struct Entry<T> {
    owner: Box<str>,
    value: T,
}

/// A path prefix bound under one host key.
#[derive(Debug)]
struct Binding {
    /// The normalised prefix as configured (`/`, `/api`).
    prefix: Box<str>,
    /// `prefix` with a trailing slash, precomputed for matching.
    prefix_slash: Box<str>,
    /// Index into the table's entries.
    entry: usize,
}

/// All bindings of one host key, longest prefix first.
#[derive(Debug)]
struct HostBindings {
    /// The normalised host key (`example.com`, `*.example.com` or `""` for the default).
    host: Box<str>,
    bindings: Vec<Binding>,
}

/// The result of a successful [`RouteTable::lookup`].
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// The routed value (typically the service).
    pub value: &'a T,
    /// The matched path prefix, normalised (`/`, `/api`); feed it to
    /// [`upstream_path`](crate::upstream_path) and [`routed_path`](crate::routed_path).
    pub prefix: &'a str,
    /// The owner (service name) the binding belongs to.
    pub owner: &'a str,
}

impl<T> Clone for RouteMatch<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RouteMatch<'_, T> {}

/// One (host, prefix) binding, as yielded by [`RouteTable::bindings`].
#[derive(Debug)]
pub struct BindingRef<'a, T> {
    /// The normalised host key: lower-case, no trailing dot; `""` is the default host.
    pub host: &'a str,
    /// The normalised path prefix.
    pub prefix: &'a str,
    /// The owner (service name).
    pub owner: &'a str,
    /// The routed value.
    pub value: &'a T,
}

/// An immutable routing table mapping (host, path prefix) bindings to values of type `T`.
///
/// Built with [`RouteTableBuilder`]; shared between requests with
/// [`SharedRoutes`](crate::SharedRoutes). Lookups are O(1) in the number of hosts and do not
/// allocate for lower-case hosts and paths without `%`.
#[derive(Debug)]
pub struct RouteTable<T> {
    hosts: Vec<HostBindings>,
    /// Normalised host key → index into `hosts`; includes wildcard keys literally and `""`.
    exact: HostMap,
    /// For each `*.suffix` key: `.suffix` → index into `hosts`, so that a wildcard lookup is a
    /// slice of the request host rather than a freshly built `*` + suffix string.
    wildcard: HostMap,
    /// Index of the default host `""`, the last resort of every lookup.
    default: Option<usize>,
    entries: Vec<Entry<T>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            exact: HostMap::default(),
            wildcard: HostMap::default(),
            default: None,
            entries: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table: every lookup misses.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder for a new table.
    pub fn builder() -> RouteTableBuilder<T> {
        RouteTableBuilder::new()
    }

    /// Number of (host, prefix) bindings.
    pub fn len(&self) -> usize {
        self.hosts.iter().map(|h| h.bindings.len()).sum()
    }

    /// Whether the table has no bindings.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Routes a request.
    ///
    /// `authority` is the raw `Host` header or `:authority` (any case, may carry a port and
    /// a trailing dot); `path` the raw, still percent-encoded request path without the query.
    ///
    /// Host level: exact → one-label wildcard (`a.b.c` tries `*.b.c`) → default `""`; the first
    /// level with bindings is final. Path: the percent-decoded path (empty = `/`) is matched
    /// on segment boundaries, longest prefix first; a path not starting with `/` (the `*` of
    /// `OPTIONS *`) matches nothing. `None` means 404.
    pub fn lookup(&self, authority: &str, path: &str) -> Option<RouteMatch<'_, T>> {
        self.lookup_host(host_without_port(authority), path)
    }

    /// Like [`lookup`](Self::lookup) for a host name that carries no port, such as a TLS
    /// server name or a configured host (`lookup_host(host, "/")` finds the root service used
    /// for TLS inheritance).
    pub fn lookup_host(&self, host: &str, path: &str) -> Option<RouteMatch<'_, T>> {
        let level = with_lookup_form(host, |host| self.level_for(host))?;
        let decoded = decode(path);
        let path: &[u8] = if decoded.is_empty() { b"/" } else { &decoded };
        if path.first() != Some(&b'/') {
            return None;
        }
        let binding = level
            .bindings
            .iter()
            .find(|b| matches_prefix(path, b.prefix_slash.as_bytes()))?;
        let entry = &self.entries[binding.entry];
        Some(RouteMatch {
            value: &entry.value,
            prefix: &binding.prefix,
            owner: &entry.owner,
        })
    }

    /// Iterates over every binding, grouped by host in insertion order, longest prefix first
    /// within a host.
    pub fn bindings(&self) -> impl Iterator<Item = BindingRef<'_, T>> + '_ {
        self.hosts.iter().flat_map(move |level| {
            level.bindings.iter().map(move |binding| {
                let entry = &self.entries[binding.entry];
                BindingRef {
                    host: &level.host,
                    prefix: &binding.prefix,
                    owner: &entry.owner,
                    value: &entry.value,
                }
            })
        })
    }

    /// The bindings of the first host level that has any, for a lookup-form host.
    fn level_for(&self, host: &str) -> Option<&HostBindings> {
        if let Some(&index) = self.exact.get(host) {
            return Some(&self.hosts[index]);
        }
        if let Some(dot) = host.find('.').filter(|&dot| dot > 0) {
            if let Some(&index) = self.wildcard.get(&host[dot..]) {
                return Some(&self.hosts[index]);
            }
        }
        self.default.map(|index| &self.hosts[index])
    }
}

/// Collects bindings, refusing conflicting ones, and builds a [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    hosts: Vec<HostBindings>,
    index: HashMap<Box<str>, usize>,
    /// `None` once every binding of the entry has been taken over by a later insert.
    entries: Vec<Option<Entry<T>>>,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            index: HashMap::new(),
            entries: Vec::new(),
        }
    }
}

impl<T> RouteTableBuilder<T> {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds every (host, prefix) pair to `value` on behalf of `owner` (a service name).
    ///
    /// `hosts` are taken as the user gave them and normalised here (lower-cased, one trailing
    /// dot dropped); `""` or an empty list is the default host. `prefixes` must already be
    /// normalised (`/`, `/api`, `/a/b`); an empty list means `/`. A wildcard host
    /// (`*.example.com`) and an exact or default host never conflict with each other.
    ///
    /// Fails with [`RouteError::Conflict`] naming the holder if any pair is already bound to
    /// a different owner; the builder is then left unchanged. Pairs already bound to the same
    /// owner are re-pointed at this `value` (the later insert wins).
    pub fn insert(
        &mut self,
        owner: &str,
        hosts: &[String],
        prefixes: &[String],
        value: T,
    ) -> Result<(), RouteError> {
        let hosts: Vec<String> = if hosts.is_empty() {
            vec![String::new()]
        } else {
            hosts.iter().map(|h| normalize_host(h)).collect()
        };
        let prefixes: Vec<&str> = if prefixes.is_empty() {
            vec!["/"]
        } else {
            prefixes.iter().map(String::as_str).collect()
        };
        for prefix in &prefixes {
            debug_assert!(
                prefix.starts_with('/') && (*prefix == "/" || !prefix.ends_with('/')),
                "path prefix {prefix:?} is not normalised"
            );
        }

        // Check everything first so that a refused insert changes nothing.
        for host in &hosts {
            for prefix in &prefixes {
                if let Some(holder) = self.owner_of(host, prefix) {
                    if holder != owner {
                        return Err(RouteError::Conflict {
                            owner: holder.to_owned(),
                        });
                    }
                }
            }
        }

        let entry = self.entries.len();
        self.entries.push(Some(Entry {
            owner: owner.into(),
            value,
        }));
        for host in hosts {
            let level = match self.index.get(host.as_str()) {
                Some(&level) => level,
                None => {
                    let level = self.hosts.len();
                    self.hosts.push(HostBindings {
                        host: host.as_str().into(),
                        bindings: Vec::new(),
                    });
                    self.index.insert(host.into_boxed_str(), level);
                    level
                }
            };
            let bindings = &mut self.hosts[level].bindings;
            for prefix in &prefixes {
                match bindings.iter_mut().find(|b| &*b.prefix == *prefix) {
                    // Same owner (checked above): the later insert wins.
                    Some(existing) => existing.entry = entry,
                    None => bindings.push(Binding {
                        prefix: (*prefix).into(),
                        prefix_slash: with_trailing_slash(prefix),
                        entry,
                    }),
                }
            }
        }
        Ok(())
    }

    /// The owner holding a normalised (host, prefix) pair, if any.
    fn owner_of(&self, host: &str, prefix: &str) -> Option<&str> {
        let level = &self.hosts[*self.index.get(host)?];
        let binding = level.bindings.iter().find(|b| &*b.prefix == prefix)?;
        self.entries[binding.entry].as_ref().map(|e| &*e.owner)
    }

    /// Finishes the table: prefixes sorted longest first, unused entries dropped.
    pub fn build(self) -> RouteTable<T> {
        let mut used = vec![false; self.entries.len()];
        for level in &self.hosts {
            for binding in &level.bindings {
                used[binding.entry] = true;
            }
        }
        let mut remap = vec![usize::MAX; self.entries.len()];
        let mut entries = Vec::new();
        for (old, entry) in self.entries.into_iter().enumerate() {
            if let (true, Some(entry)) = (used[old], entry) {
                remap[old] = entries.len();
                entries.push(entry);
            }
        }

        let mut hosts = self.hosts;
        let mut exact = HostMap::with_capacity_and_hasher(hosts.len(), Default::default());
        let mut wildcard = HostMap::default();
        let mut default = None;
        for (index, level) in hosts.iter_mut().enumerate() {
            for binding in &mut level.bindings {
                binding.entry = remap[binding.entry];
            }
            // Stable, so equal-length prefixes keep insertion order (they can never both match
            // the same path anyway).
            level
                .bindings
                .sort_by_key(|b| std::cmp::Reverse(b.prefix.len()));
            if let Some(suffix) = level.host.strip_prefix('*').filter(|s| s.starts_with('.')) {
                wildcard.insert(suffix.into(), index);
            }
            if level.host.is_empty() {
                default = Some(index);
            }
            exact.insert(level.host.clone(), index);
        }
        RouteTable {
            hosts,
            exact,
            wildcard,
            default,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// A table from `(owner, hosts, prefixes)`; each value is its owner's name.
    fn table(services: &[(&str, &[&str], &[&str])]) -> RouteTable<String> {
        let mut builder = RouteTable::builder();
        for (owner, hosts, prefixes) in services {
            builder
                .insert(
                    owner,
                    &strings(hosts),
                    &strings(prefixes),
                    owner.to_string(),
                )
                .unwrap();
        }
        builder.build()
    }

    fn route(table: &RouteTable<String>, host: &str, path: &str) -> Option<String> {
        table.lookup(host, path).map(|m| {
            assert_eq!(m.value, m.owner);
            m.value.clone()
        })
    }

    fn routes(table: &RouteTable<String>, host: &str, path: &str) -> Option<(String, String)> {
        table
            .lookup(host, path)
            .map(|m| (m.value.clone(), m.prefix.to_string()))
    }

    #[test]
    fn empty_table_misses() {
        let t: RouteTable<String> = RouteTable::new();
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert!(t.lookup("example.test", "/").is_none());
        assert!(t.lookup("", "/").is_none());
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let t = table(&[
            ("exact", &["a.wild.test"], &[]),
            ("wild", &["*.wild.test"], &[]),
            ("default", &[], &[]),
        ]);
        assert_eq!(route(&t, "a.wild.test", "/").as_deref(), Some("exact"));
        assert_eq!(route(&t, "b.wild.test", "/").as_deref(), Some("wild"));
        // Only one label is replaced by the wildcard.
        assert_eq!(route(&t, "a.b.wild.test", "/").as_deref(), Some("default"));
        assert_eq!(route(&t, "wild.test", "/").as_deref(), Some("default"));
        assert_eq!(route(&t, "other.test", "/x").as_deref(), Some("default"));
        // An empty host (HTTP/1.0 without Host) reaches the default service.
        assert_eq!(route(&t, "", "/").as_deref(), Some("default"));
    }

    #[test]
    fn wildcard_needs_a_dot_after_the_first_character() {
        let t = table(&[("wild", &["*.test"], &[]), ("default", &[], &[])]);
        assert_eq!(route(&t, "a.test", "/").as_deref(), Some("wild"));
        assert_eq!(route(&t, ".test", "/").as_deref(), Some("default"));
        assert_eq!(route(&t, "test", "/").as_deref(), Some("default"));
        // The literal wildcard key is also an exact key, as upstream.
        assert_eq!(route(&t, "*.test", "/").as_deref(), Some("wild"));
    }

    #[test]
    fn wildcard_without_default_misses_deeper_hosts() {
        let t = table(&[("wild", &["*.wild.test"], &[])]);
        assert_eq!(route(&t, "x.wild.test", "/"), Some("wild".into()));
        assert_eq!(route(&t, "a.b.wild.test", "/"), None);
        assert_eq!(route(&t, "wild.test", "/"), None);
    }

    #[test]
    fn hosts_are_case_insensitive_and_ignore_one_trailing_dot() {
        let t = table(&[
            ("svc", &["example.test"], &[]),
            ("upper", &["UPPER.Test."], &[]),
        ]);
        for host in [
            "example.test",
            "EXAMPLE.test",
            "Example.Test.",
            "example.test.:8080",
        ] {
            assert_eq!(route(&t, host, "/").as_deref(), Some("svc"), "{host}");
        }
        assert_eq!(route(&t, "example.test..", "/"), None);
        for host in ["upper.test", "UPPER.TEST", "upper.test."] {
            assert_eq!(route(&t, host, "/").as_deref(), Some("upper"), "{host}");
        }
        let w = table(&[("wild", &["*.Wild.Test"], &[])]);
        assert_eq!(route(&w, "A.WILD.test.", "/").as_deref(), Some("wild"));
        assert_eq!(route(&w, "a.b.wild.test", "/"), None);
    }

    #[test]
    fn port_is_stripped_from_the_authority() {
        let t = table(&[("svc", &["example.test"], &[]), ("v6", &["::1"], &[])]);
        assert_eq!(route(&t, "example.test:8080", "/").as_deref(), Some("svc"));
        assert_eq!(route(&t, "[::1]:80", "/").as_deref(), Some("v6"));
        assert_eq!(route(&t, "[::1]", "/"), None);
        // lookup_host takes the name as is.
        assert!(t.lookup_host("example.test:8080", "/").is_none());
        assert_eq!(
            t.lookup_host("example.test", "/").map(|m| m.owner),
            Some("svc")
        );
    }

    #[test]
    fn chosen_host_level_is_final() {
        // A host bound only at /api gives 404 for /apix even though a default service exists.
        let t = table(&[("api", &["app.test"], &["/api"]), ("default", &[], &[])]);
        assert_eq!(route(&t, "app.test", "/api/x").as_deref(), Some("api"));
        assert_eq!(route(&t, "app.test", "/apix"), None);
        assert_eq!(route(&t, "app.test", "/"), None);
        assert_eq!(route(&t, "other.test", "/apix").as_deref(), Some("default"));

        let w = table(&[("wild", &["*.app.test"], &["/api"]), ("default", &[], &[])]);
        assert_eq!(route(&w, "x.app.test", "/"), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[
            ("root", &["app.test"], &["/"]),
            ("api", &["app.test"], &["/api"]),
            ("special", &["app.test"], &["/api/special"]),
        ]);
        let cases = [
            ("/api/special/x", "special", "/api/special"),
            ("/api/special", "special", "/api/special"),
            ("/api/specialx", "api", "/api"),
            ("/api", "api", "/api"),
            ("/api/", "api", "/api"),
            ("/apiary", "root", "/"),
            ("/api.json", "root", "/"),
            ("/", "root", "/"),
            ("", "root", "/"),
            ("//api", "root", "/"),
            ("/api/../x", "api", "/api"),
        ];
        for (path, owner, prefix) in cases {
            assert_eq!(
                routes(&t, "app.test", path),
                Some((owner.to_string(), prefix.to_string())),
                "{path}"
            );
        }
    }

    #[test]
    fn decoded_path_is_matched() {
        let t = table(&[("api", &[], &["/api"]), ("ab", &[], &["/a/b"])]);
        assert_eq!(route(&t, "", "/api/a%2Fb/c%41").as_deref(), Some("api"));
        assert_eq!(route(&t, "", "/api%2Fx").as_deref(), Some("api"));
        assert_eq!(route(&t, "", "/%61pi").as_deref(), Some("api"));
        assert_eq!(route(&t, "", "/a%2Fb").as_deref(), Some("ab"));
        assert_eq!(route(&t, "", "/a%2fb/c").as_deref(), Some("ab"));
        assert_eq!(route(&t, "", "/api%2F").as_deref(), Some("api"));
        assert_eq!(route(&t, "", "/apix"), None);
    }

    #[test]
    fn non_slash_paths_match_nothing() {
        let t = table(&[("root", &[], &[])]);
        assert_eq!(route(&t, "app.test", "*"), None);
        assert_eq!(route(&t, "app.test", "api"), None);
        assert_eq!(route(&t, "app.test", "").as_deref(), Some("root"));
        assert_eq!(route(&t, "app.test", "/anything").as_deref(), Some("root"));
    }

    #[test]
    fn exact_wildcard_and_default_never_conflict() {
        let mut b = RouteTableBuilder::new();
        b.insert("a", &strings(&["example.test"]), &strings(&["/"]), 1)
            .unwrap();
        b.insert("b", &strings(&["*.example.test"]), &strings(&["/"]), 2)
            .unwrap();
        b.insert("c", &[], &strings(&["/"]), 3).unwrap();
        let t = b.build();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup("example.test", "/").map(|m| *m.value), Some(1));
        assert_eq!(t.lookup("x.example.test", "/").map(|m| *m.value), Some(2));
        assert_eq!(t.lookup("x.test", "/").map(|m| *m.value), Some(3));
    }

    #[test]
    fn two_default_services_at_the_same_prefix_conflict() {
        let mut b = RouteTableBuilder::new();
        b.insert("one", &[], &[], ()).unwrap();
        let err = b.insert("two", &[], &[], ()).unwrap_err();
        assert_eq!(
            err,
            RouteError::Conflict {
                owner: "one".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "host settings conflict with another service"
        );
        // The explicit empty host is the same default key.
        let err = b
            .insert("three", &strings(&[""]), &strings(&["/"]), ())
            .unwrap_err();
        assert_eq!(
            err,
            RouteError::Conflict {
                owner: "one".into()
            }
        );
    }

    #[test]
    fn same_host_different_prefixes_is_fine() {
        let t = table(&[
            ("web", &["app.test"], &["/"]),
            ("api", &["app.test"], &["/api"]),
            ("api2", &[], &["/api"]),
        ]);
        assert_eq!(route(&t, "app.test", "/api/x").as_deref(), Some("api"));
        assert_eq!(route(&t, "app.test", "/x").as_deref(), Some("web"));
    }

    #[test]
    fn conflicts_compare_normalised_hosts() {
        let mut b = RouteTableBuilder::new();
        b.insert("one", &strings(&["example.test"]), &strings(&["/api"]), ())
            .unwrap();
        let err = b
            .insert(
                "two",
                &strings(&["other.test", "Example.TEST."]),
                &strings(&["/", "/api"]),
                (),
            )
            .unwrap_err();
        assert_eq!(
            err,
            RouteError::Conflict {
                owner: "one".into()
            }
        );
        // The refused insert left nothing behind.
        let t = b.build();
        assert_eq!(t.len(), 1);
        assert!(t.lookup("other.test", "/").is_none());
    }

    #[test]
    fn same_owner_may_reinsert_and_later_value_wins() {
        let mut b = RouteTableBuilder::new();
        b.insert("svc", &strings(&["a.test", "b.test"]), &strings(&["/"]), 1)
            .unwrap();
        b.insert("svc", &strings(&["a.test"]), &strings(&["/", "/x"]), 2)
            .unwrap();
        let t = b.build();
        assert_eq!(t.lookup("a.test", "/").map(|m| *m.value), Some(2));
        assert_eq!(t.lookup("a.test", "/x").map(|m| *m.value), Some(2));
        assert_eq!(t.lookup("b.test", "/").map(|m| *m.value), Some(1));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn duplicate_hosts_and_prefixes_bind_once() {
        let mut b = RouteTableBuilder::new();
        b.insert(
            "svc",
            &strings(&["a.test", "A.test"]),
            &strings(&["/x", "/x"]),
            7,
        )
        .unwrap();
        let t = b.build();
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup("a.test", "/x/y").map(|m| *m.value), Some(7));
    }

    #[test]
    fn unused_entries_are_dropped_at_build() {
        let mut b = RouteTableBuilder::new();
        b.insert("svc", &[], &[], String::from("old")).unwrap();
        b.insert("svc", &[], &[], String::from("new")).unwrap();
        let t = b.build();
        assert_eq!(t.entries.len(), 1);
        assert_eq!(t.lookup("", "/").map(|m| m.value.as_str()), Some("new"));
    }

    #[test]
    fn root_service_lookup_for_tls_inheritance() {
        let t = table(&[
            ("root", &["app.test"], &["/"]),
            ("api", &["app.test"], &["/api"]),
            ("wildroot", &["*.wild.test"], &["/"]),
            ("orphan", &["lonely.test"], &["/admin"]),
        ]);
        assert_eq!(
            t.lookup_host("app.test", "/").map(|m| m.owner),
            Some("root")
        );
        assert_eq!(
            t.lookup_host("x.wild.test", "/").map(|m| m.owner),
            Some("wildroot")
        );
        assert_eq!(
            t.lookup_host("*.wild.test", "/").map(|m| m.owner),
            Some("wildroot")
        );
        assert!(t.lookup_host("lonely.test", "/").is_none());
    }

    #[test]
    fn bindings_iterate_in_host_order_longest_first() {
        let t = table(&[
            ("web", &["App.test"], &["/"]),
            ("api", &["app.test"], &["/api"]),
            ("default", &[], &[]),
        ]);
        let all: Vec<_> = t
            .bindings()
            .map(|b| (b.host, b.prefix, b.owner, b.value.as_str()))
            .collect();
        assert_eq!(
            all,
            vec![
                ("app.test", "/api", "api", "api"),
                ("app.test", "/", "web", "web"),
                ("", "/", "default", "default"),
            ]
        );
    }

    #[test]
    fn uppercase_lookup_of_long_host() {
        let host = format!("{}.test", "a".repeat(300));
        let t = table(&[("long", &[host.as_str()], &[])]);
        assert_eq!(
            route(&t, &host.to_uppercase(), "/").as_deref(),
            Some("long")
        );
    }

    #[test]
    fn many_hosts_each_resolve_to_their_own_value() {
        let mut b = RouteTableBuilder::new();
        for i in 0..10_000usize {
            b.insert(&format!("s{i}"), &[format!("host{i}.example.com")], &[], i)
                .unwrap();
        }
        let t = b.build();
        for i in 0..10_000usize {
            let host = format!("HOST{i}.example.com");
            assert_eq!(t.lookup(&host, "/").map(|m| *m.value), Some(i));
        }
        assert!(t.lookup("host10000.example.com", "/").is_none());
    }
}
